"""LFW View 2 verification with the vendored MobileFaceNet: float vs static int8, side by side.

Protocol (DESIGN.md "Faces"): 6000 pairs of lfw_pairs (deep-funneled, central 150 px, 112 px),
10-fold accuracy with the threshold chosen on the other 9 folds, EER, TAR@FAR=1e-3 over all
pairs. Unlock check: a threshold for FAR=1e-3 chosen on folds 1-5 is applied to folds 6-10
and vice versa (held-out FAR/TAR). Speed: onnxruntime, 1 thread, batch 8, on preprocessed
112x112 inputs (one forward per image; the embedder runs two with flip TTA), and the
anchor of DESIGN.md (the original batch-1 float ONNX) timed in the same run.

Hands R@1 float vs int8 is not measured here yet: see ``hands_rows`` (hook for the hand work).

Usage: python benchmarks/lfw_verification.py [--no-baseline]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from biomatch.export import OnnxEmbedder, Preprocess  # noqa: E402
from biomatch.faces.embedder import FACE_PREPROCESS, FLOAT_MODEL, FaceEmbedder, assets_dir  # noqa: E402
from biomatch.faces.lfw import LfwPairs, default_pairs, embed_images, score_pairs  # noqa: E402
from biomatch.metrics.verification import kfold_accuracy, threshold_at_far, verification_report  # noqa: E402
from biomatch.results import markdown_table, update_benchmarks_section, write_result  # noqa: E402

TARGET_FAR = 1e-3
REFERENCE = {
    "source": "foamliu/MobileFaceNet README / Chen et al. 2018, on 5-landmark-aligned LFW (we use unaligned crops)",
    "metrics": {"accuracy": 0.9948},
}


def held_out_unlock(scores: np.ndarray, pairs: LfwPairs) -> dict[str, float]:
    """FAR/TAR on one half of the folds at the FAR=1e-3 threshold chosen on the other half."""
    half = pairs.folds < 5
    out = {}
    for name, cal in (("a", half), ("b", ~half)):
        t = threshold_at_far(scores[cal], pairs.labels[cal], TARGET_FAR)
        test_s, test_y = scores[~cal], pairs.labels[~cal]
        out[f"heldout_far_{name}"] = float((test_s[test_y == 0] >= t).mean())
        out[f"heldout_tar_{name}"] = float((test_s[test_y == 1] >= t).mean())
        out[f"threshold_{name}"] = float(t)
    return out


def throughput(model: OnnxEmbedder, x: np.ndarray, repeats: int = 3) -> float:
    """Best-of-``repeats`` images/s of raw forward passes (no TTA) at the model's batch size."""
    model.run(x[:16])
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        model.run(x)
        best = max(best, len(x) / (time.perf_counter() - t))
    return best


def anchor_throughput(x: np.ndarray, repeats: int = 3) -> float:
    """DESIGN.md anchor: the original MobileFaceNet.onnx, batch 1, plain onnxruntime, 1 thread."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(assets_dir() / FLOAT_MODEL), opts, providers=["CPUExecutionProvider"])
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(len(x)):
            sess.run(None, {"input0": x[i : i + 1]})
        best = max(best, len(x) / (time.perf_counter() - t))
    return best


def evaluate(embedder: FaceEmbedder, pairs: LfwPairs) -> tuple[dict[str, float], float]:
    """Verification metrics of one embedder on all pairs, and end-to-end embed img/s."""
    images = pairs.images
    t = time.perf_counter()
    emb = embed_images(embedder, pairs, images)
    e2e = len(images) / (time.perf_counter() - t)
    scores = score_pairs(embedder, pairs, emb)
    kf = kfold_accuracy(scores, pairs.labels, pairs.folds)
    rep = verification_report(scores, pairs.labels, fars=(1e-2, TARGET_FAR))
    metrics = {
        "accuracy": {"mean": float(kf.accuracies.mean()), "std": float(kf.accuracies.std(ddof=1)),
                     "folds": kf.accuracies.tolist()},
        "eer": rep["eer"],
        "tar@far=1e-3": rep["tar@far=1e-3"],
        "tar@far=1e-2": rep["tar@far=1e-2"],
        "d_prime": rep["d_prime"],
        **held_out_unlock(scores, pairs),
    }
    return metrics, e2e


def hands_rows() -> list[list[object]]:
    """Hook: hands dorsal->palmar R@1, float vs int8 (to be filled by the hand work).

    Plan: export the trained hand embedder with ``biomatch export CKPT -o hands.onnx
    --backbone NAME --head-dims ... --preset imagenet --input-size N`` and its int8 copy
    with ``--quantize static --calib-dir <train images>``, wrap both in
    ``biomatch.export.OnnxEmbedder`` with the hand preprocessing, and compute R@1 with the
    hands protocol; return rows [model, R@1, img/s, MB]. Empty until then.
    """
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-tight-crop float row")
    args = parser.parse_args()

    pairs = default_pairs()
    calib_free = np.random.default_rng(0).choice(len(pairs.images), 256, replace=False)
    from biomatch.data.images import load_image

    speed_x = FACE_PREPROCESS.batch([load_image(pairs.path(pairs.images[i])) for i in calib_free])
    anchor = anchor_throughput(speed_x[:128])

    variants: list[tuple[str, str, FaceEmbedder]] = [
        ("float", "MobileFaceNet ONNX float, tight crop, flip TTA", FaceEmbedder.default()),
        ("int8", "MobileFaceNet ONNX static int8 QDQ, tight crop, flip TTA", FaceEmbedder.default(int8=True)),
    ]
    if not args.no_baseline:
        plain = Preprocess(flip_tta=True)  # the whole 112 px frame, as shipped in lfw_pairs
        variants.append(("float-nocrop", "MobileFaceNet ONNX float, full 150px frame, flip TTA",
                         FaceEmbedder(assets_dir() / FLOAT_MODEL, name="mobilefacenet", preprocess=plain, batch_size=8)))

    rows, results = [], {}
    for key, method, emb in variants:
        metrics, e2e = evaluate(emb, pairs)
        ips = throughput(emb, speed_x)
        mb = emb.model_path.stat().st_size / 1e6
        timing = {"model_img_per_s": ips, "embed_img_per_s": e2e, "anchor_img_per_s": anchor,
                  "speedup_vs_anchor": ips / anchor, "model_mb": mb}
        results[key] = (metrics, timing)
        name = "lfw_verification" if key == "float" else f"lfw_verification_{key.replace('-', '_')}"
        write_result(
            name, benchmark="lfw_verification", method=method,
            dataset="LFW View 2 pairs (lfw_pairs: deep-funneled, central 150 px -> 112 px)",
            protocol="10-fold accuracy (threshold on 9 folds), EER and TAR@FAR over all 6000 pairs; "
                     "held-out unlock: FAR=1e-3 threshold on folds 1-5 applied to 6-10 (a) and reverse (b)",
            seeds=[0], metrics=metrics, reference=REFERENCE, timing=timing,
            extra={"model_sha256": emb.model_hash, "preprocess": emb.preprocess.to_dict(),
                   "threads": 1, "batch_size": emb.batch_size},
        )
        m = metrics
        rows.append([
            method, f"{m['accuracy']['mean']:.4f} ± {m['accuracy']['std']:.4f}", f"{m['eer']:.4f}",
            f"{m['tar@far=1e-3']:.3f}", f"{m['heldout_far_a']:.4f} / {m['heldout_far_b']:.4f}",
            f"{m['heldout_tar_a']:.3f} / {m['heldout_tar_b']:.3f}", f"{ips:.0f}", f"{ips / anchor:.2f}×",
            f"{e2e:.0f}", f"{mb:.2f}",
        ])
        print(rows[-1], flush=True)

    f_acc = results["float"][0]["accuracy"]["mean"]
    q_acc = results["int8"][0]["accuracy"]["mean"]
    speedup = results["int8"][1]["model_img_per_s"] / results["float"][1]["model_img_per_s"]
    table = markdown_table(
        ["method", "10-fold acc", "EER", "TAR@FAR=1e-3", "held-out FAR a/b", "held-out TAR a/b",
         "img/s (1 thr)", "vs anchor", "embed img/s (decode+TTA)", "MB"],
        rows,
    )
    hands = hands_rows()
    md = "\n".join([
        "## Faces: LFW View 2 verification, float vs int8 (`benchmarks/lfw_verification.py`)",
        "",
        "Vendored MobileFaceNet (foamliu) via onnxruntime on lfw_pairs crops (deep-funneled, **not** "
        "landmark-aligned). Reference: 0.9948 on aligned LFW. Tight crop = central 100 px of the 112 px "
        "frame shifted up 6 px, chosen on folds 1-2 only. Int8 = static QDQ, per-channel, 128 lfw62 "
        "calibration images. img/s: raw forward passes, batch 8, 1 thread; anchor = original batch-1 "
        f"float ONNX timed in the same run ({anchor:.0f} img/s here; DESIGN.md: 270).",
        "",
        table,
        "",
        f"int8 vs float: accuracy {100 * (q_acc - f_acc):+.2f} pt, {speedup:.2f}× faster.",
        "Held-out FAR at a 1e-3 target is measured on 1500 impostor pairs (1 false accept = 6.7e-4): "
        "treat it as a sanity check, not a precise FAR.",
        "",
        "Hands dorsal→palmar R@1 float vs int8: " + ("see below." if hands else
                                                       "pending (hook `hands_rows` in this script)."),
    ])
    if hands:
        md += "\n\n" + markdown_table(["model", "R@1", "img/s", "MB"], hands)
    update_benchmarks_section("lfw_verification", md)
    print(md)


if __name__ == "__main__":
    main()
