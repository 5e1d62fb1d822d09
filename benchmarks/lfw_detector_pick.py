"""Which landmark detector to align with: measured on LFW View 2 tuning folds 1-2 only.

For each detector of ``biomatch.faces.landmarks`` (BlazeFace 4 points, Face Mesh 5 points,
dlib HOG + 5-point model, Haar box with median landmark positions) every image of the 1,200
pairs of folds 1-2 is detected, aligned to the ArcFace template and embedded with the float
MobileFaceNet (flip TTA). A face a detector misses is aligned with the LFW-frame fallback and
counted as a failure to acquire (FTA). Reported: 2-fold accuracy (threshold on the other
fold), EER, FTA and CPU ms per image of the detector alone. The pick (highest accuracy, then
speed) becomes ``DEFAULT_ORDER``; the report folds 3-10 are never looked at here.

Usage: python benchmarks/lfw_detector_pick.py [--detectors blazeface,mesh,dlib,haar]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from biomatch.data.images import load_image  # noqa: E402
from biomatch.faces.align import align  # noqa: E402
from biomatch.faces.embedder import ALIGNED_PREPROCESS, FaceEmbedder, frame_landmarks  # noqa: E402
from biomatch.faces.landmarks import detect_landmarks  # noqa: E402
from biomatch.faces.lfw import default_pairs  # noqa: E402
from biomatch.metrics.verification import eer, kfold_accuracy  # noqa: E402
from biomatch.results import markdown_table, update_benchmarks_section, write_result  # noqa: E402

TUNING_FOLDS = (0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detectors", default="blazeface,mesh,dlib,haar")
    args = ap.parse_args()
    names = [d.strip() for d in args.detectors.split(",") if d.strip()]
    pairs = default_pairs()
    keep = np.isin(pairs.folds, TUNING_FOLDS)
    left = [r for r, k in zip(pairs.left, keep) if k]
    right = [r for r, k in zip(pairs.right, keep) if k]
    labels, folds = pairs.labels[keep], pairs.folds[keep]
    images = sorted(set(left) | set(right))
    pos = {r: i for i, r in enumerate(images)}
    a, b = np.array([pos[r] for r in left]), np.array([pos[r] for r in right])
    model = FaceEmbedder.default()
    crops: dict[str, list] = {n: [] for n in names}
    misses = {n: 0 for n in names}
    cpu = {n: 0.0 for n in names}
    for k, rel in enumerate(images):
        im = load_image(pairs.path(rel))
        for n in names:
            t = time.process_time()
            det = detect_landmarks(im, (n,))
            cpu[n] += time.process_time() - t
            if det is None:
                misses[n] += 1
                det = frame_landmarks(im)
            crops[n].append(align(im, det.points, det.names))
        if (k + 1) % 200 == 0:
            print(f"{k + 1}/{len(images)}", flush=True)
    rows, results = [], {}
    for n in names:
        emb = np.concatenate([model.embed_arrays(ALIGNED_PREPROCESS.batch(crops[n][i : i + 64]))
                              for i in range(0, len(images), 64)])
        s = (emb[a] * emb[b]).sum(1).astype(np.float64)
        kf = kfold_accuracy(s, labels, folds)
        m = {"accuracy": float(kf.accuracies.mean()), "eer": float(eer(s, labels)),
             "fta": misses[n] / len(images), "detector_cpu_ms": 1000 * cpu[n] / len(images)}
        results[n] = m
        rows.append([n, f"{m['accuracy']:.4f}", f"{m['eer']:.4f}", f"{m['fta']:.4f}", f"{m['detector_cpu_ms']:.1f}"])
        print(rows[-1], flush=True)
    write_result(
        "lfw_detector_pick", benchmark="lfw_detector_pick", method="landmark detector for 5-point alignment",
        dataset="LFW View 2 pairs, folds 1-2 only (tuning)",
        protocol="2-fold accuracy (threshold on the other fold) and EER on the 1,200 pairs of folds 1-2; "
                 "float MobileFaceNet, flip TTA; a miss is aligned with the LFW-frame fallback and counted in FTA",
        seeds=[0], metrics=results, extra={"n_images": len(images), "seed_role": "tuning"},
    )
    md = "\n".join([
        "## Faces: which landmark detector aligns best (`benchmarks/lfw_detector_pick.py`)",
        "",
        f"LFW View 2 folds 1-2 only (tuning; {len(images)} images, 1,200 pairs); float MobileFaceNet on faces "
        "aligned to the 112x112 ArcFace template with each detector's landmarks. CPU ms = detector alone, 1 thread.",
        "",
        markdown_table(["detector", "2-fold acc", "EER", "FTA", "CPU ms/img"], rows),
    ])
    update_benchmarks_section("lfw_detector_pick", md)
    print(md)


if __name__ == "__main__":
    main()
