"""LFW View 2 verification: aligned MobileFaceNet (float, int8), the old crop pipeline and the
``face_recognition`` peer, in one run, on the same pairs, with the same metric code.

Protocol (DESIGN.md "Faces"): 6000 pairs of lfw_pairs (deep-funneled, central 150 px, 112 px).
10-fold accuracy with the threshold chosen on the other 9 folds, EER, TAR@FAR=1e-3 over all
pairs, held-out unlock (FAR=1e-3 threshold on folds 1-5 applied to 6-10 and reverse).
Failure to acquire (FTA, ISO/IEC 19795-1): share of images where no detector found a face
(those are aligned with the LFW-frame fallback so every pair still gets a score).

Ours: landmark detection (Face Mesh, then BlazeFace, full-range BlazeFace, Haar; picked by
``benchmarks/lfw_detector_pick.py`` on folds 1-2) + similarity alignment to the ArcFace
template + MobileFaceNet, flip TTA, 1 thread. The peer: ``face_recognition``'s default
pipeline reproduced with dlib (``biomatch.faces.peer``), its descriptors cached on disk
(``.cache/peer_face_recognition_lfw.npz``; computed by the same code, resumable, in fold
order) because it needs ~0.16 CPU-s per image. Speed is images per CPU-second (process CPU
time, so the machine's load does not count): decode + detect + align + embed for ours,
decode + detect + landmarks + descriptor for the peer. Where the peer cache does not cover
every fold, both are also compared on the folds it covers.

Usage: python benchmarks/lfw_verification.py [--no-peer] [--peer-budget-s S]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from biomatch.data.images import load_image  # noqa: E402
from biomatch.export import OnnxEmbedder  # noqa: E402
from biomatch.faces import peer as peer_mod  # noqa: E402
from biomatch.faces.embedder import ALIGNED_PREPROCESS, FLOAT_MODEL, FaceEmbedder, assets_dir  # noqa: E402
from biomatch.faces.guard import check_face_crop  # noqa: E402
from biomatch.faces.lfw import LfwPairs, default_pairs, load_cached_embeddings, save_cached_embeddings  # noqa: E402
from biomatch.metrics.verification import kfold_accuracy, threshold_at_far, verification_report  # noqa: E402
from biomatch.paths import cache_dir  # noqa: E402
from biomatch.results import markdown_table, update_benchmarks_section, write_result  # noqa: E402

TARGET_FAR = 1e-3
DATASET = "LFW View 2 pairs (lfw_pairs: deep-funneled, central 150 px -> 112 px)"
REFERENCE = {
    "source": "foamliu/MobileFaceNet README / Chen et al. 2018, 5-landmark-aligned LFW; face_recognition "
              "(dlib ResNet) measured in this run",
    "metrics": {"accuracy": 0.9948},
}
PEER_CACHE = "peer_face_recognition_lfw.npz"


def held_out_unlock(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict[str, float]:
    """FAR/TAR on one half of the folds at the FAR=1e-3 threshold chosen on the other half."""
    ids = np.unique(folds)
    half = np.isin(folds, ids[: len(ids) // 2])
    out = {}
    if min(((labels == 0) & half).sum(), ((labels == 0) & ~half).sum()) * TARGET_FAR < 1:
        return out  # too few impostor pairs in a half to calibrate FAR = 1e-3 there
    for name, cal in (("a", half), ("b", ~half)):
        t = threshold_at_far(scores[cal], labels[cal], TARGET_FAR)
        test_s, test_y = scores[~cal], labels[~cal]
        out[f"heldout_far_{name}"] = float((test_s[test_y == 0] >= t).mean())
        out[f"heldout_tar_{name}"] = float((test_s[test_y == 1] >= t).mean())
    return out


def metric_block(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict[str, object]:
    """The one metric code every row goes through (ours and the peer's)."""
    kf = kfold_accuracy(scores, labels, folds)
    rep = verification_report(scores, labels, fars=(1e-2, TARGET_FAR))
    return {
        "accuracy": {"mean": float(kf.accuracies.mean()), "std": float(kf.accuracies.std(ddof=1)),
                     "folds": kf.accuracies.tolist()},
        "eer": rep["eer"], "tar@far=1e-3": rep["tar@far=1e-3"], "tar@far=1e-2": rep["tar@far=1e-2"],
        "d_prime": rep["d_prime"], "n_pairs": int(len(scores)),
        **held_out_unlock(scores, labels, folds),
    }


def throughput(model: OnnxEmbedder, x: np.ndarray, repeats: int = 3) -> float:
    """Best-of-``repeats`` images/s of raw forward passes (no TTA), batch 8, 1 thread."""
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


def detect_and_align(pairs: LfwPairs, images: list[str]) -> tuple[list[Image.Image], list[str], float]:
    """Aligned crops of every image, who found each face, and the CPU seconds (decode+detect+align)."""
    aligner = FaceEmbedder.default(on_missing="frame")
    crops, found = [], []
    cpu = 0.0
    for i in range(0, len(images), 64):
        t = time.process_time()
        batch = [load_image(pairs.path(r)) for r in images[i : i + 64]]
        crops += aligner.prepare(batch, images[i : i + 64])
        cpu += time.process_time() - t
        found += aligner.last_detectors
        if (i // 64) % 20 == 0:
            print(f"aligned {len(crops)}/{len(images)}", flush=True)
    return crops, found, cpu


def embed_crops(model: FaceEmbedder, crops: list) -> tuple[np.ndarray, float]:
    """Embeddings of prepared crops (64 per forward) and the CPU seconds it took."""
    t = time.process_time()
    out = np.concatenate([model.embed_arrays(model.preprocess.batch(crops[i : i + 64])) for i in range(0, len(crops), 64)])
    return out, time.process_time() - t


def uncropped(face: Image.Image, scale: float, seed: int) -> Image.Image:
    """A synthetic 'uncropped photo': the face at ``scale`` of a blurred scene made from itself."""
    rng = np.random.default_rng(seed)
    side = round(face.size[0] / scale)
    scene = face.resize((side, side), Image.BICUBIC).filter(ImageFilter.GaussianBlur(side / 10))
    x, y = (int(v) for v in rng.integers(0, side - face.size[0] + 1, 2))
    scene.paste(face, (x, y))
    return scene


def guard_study(pairs: LfwPairs, n: int = 400) -> dict[str, float]:
    """The face-crop guard on 400 images of folds 3-10 (held out from its tuning): share of real
    LFW crops it refuses, share of synthetic uncropped photos (the face at 1/2 and 1/3 of the
    frame) it lets through, and the impostor accept rate of face-crop when such photos of two
    different people are enrolled and verified (the misuse of issue #10), at the face-crop
    threshold, without and with the guard (a refused enrolment or probe cannot accept)."""
    held = sorted({r for r, f in zip(pairs.left + pairs.right, np.r_[pairs.folds, pairs.folds]) if f >= 2})
    rng = np.random.default_rng(0)
    sel = [held[i] for i in rng.choice(len(held), n, replace=False)]
    refused = {"crop": np.zeros(n, bool), "half": np.zeros(n, bool), "third": np.zeros(n, bool)}
    imgs, halves = [], []
    for k, rel in enumerate(sel):
        im = load_image(pairs.path(rel))
        imgs.append(im)
        halves.append(uncropped(im, 0.5, k))
        for key, img in (("crop", im), ("half", halves[-1]), ("third", uncropped(im, 1 / 3, k))):
            try:
                check_face_crop(img)
            except Exception:  # noqa: BLE001 - InputError is the refusal
                refused[key][k] = True
    crop = FaceEmbedder.default(detect=False, guard=False)
    threshold = FaceEmbedder.default(detect=False).load_threshold().threshold
    probe = np.concatenate([crop.embed(halves[i : i + 64]) for i in range(0, n, 64)])
    person = [r.split("/")[1] for r in sel]
    other = np.array([next(j for j in rng.permutation(n) if person[j] != person[i]) for i in range(n)])
    enrol = [uncropped(imgs[j], 0.5, 10_000 + j) for j in other]  # another photo layout of another person
    templ = np.concatenate([crop.embed(enrol[i : i + 64]) for i in range(0, n, 64)])
    enrol_refused = np.zeros(n, bool)
    for i, img in enumerate(enrol):
        try:
            check_face_crop(img)
        except Exception:  # noqa: BLE001 - InputError is the refusal
            enrol_refused[i] = True
    accepted = (probe * templ).sum(1) >= threshold
    return {"guard_refused_real_crops": float(refused["crop"].mean()),
            "guard_passed_uncropped_half": float(1 - refused["half"].mean()),
            "guard_passed_uncropped_third": float(1 - refused["third"].mean()),
            "face_crop_far_uncropped_probe_no_guard": float(accepted.mean()),
            "face_crop_far_uncropped_probe_with_guard": float((accepted & ~refused["half"] & ~enrol_refused).mean()),
            "face_crop_threshold": float(threshold), "guard_n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-peer", action="store_true", help="skip the face_recognition row")
    parser.add_argument("--peer-budget-s", type=float, default=0.0,
                        help="CPU-seconds this run may spend extending the peer cache (0 = use what is cached)")
    parser.add_argument("--reuse-ours", action="store_true",
                        help="take our embeddings and their CPU timings from the cache an earlier full run of this "
                             "script wrote for the same embedder_id (to add peer folds later without recomputing)")
    args = parser.parse_args()

    pairs = default_pairs()
    images = pairs.images
    a, b = pairs.index_pairs(images)
    rows, results = [], {}

    def row(key: str, method: str, m: dict, ips_cpu: float | None, fta: float | None, note: str = "") -> None:
        rows.append([method, f"{m['accuracy']['mean']:.4f} ± {m['accuracy']['std']:.4f}", f"{m['eer']:.4f}",
                     f"{m['tar@far=1e-3']:.3f}",
                     f"{m['heldout_far_a']:.4f} / {m['heldout_far_b']:.4f}" if "heldout_far_a" in m else "— (too few pairs)",
                     "—" if fta is None else f"{fta:.4f}", "—" if ips_cpu is None else f"{ips_cpu:.1f}", note])
        print(rows[-1], flush=True)

    # ours: detect + align once, then float and int8
    variants = [("float", "MobileFaceNet float, Face Mesh 5-point alignment, flip TTA", FaceEmbedder.default()),
                ("int8", "MobileFaceNet static int8, Face Mesh 5-point alignment, flip TTA", FaceEmbedder.default(int8=True))]
    reused = {key: load_cached_embeddings(model, pairs, images) for key, _, model in variants} if args.reuse_ours else {}
    if reused and all(r is not None and r[2] for r in reused.values()):
        found = reused["float"][1]
        align_cpu = reused["float"][2]["align_cpu_s"]
        crops = [Image.open(pairs.path(r)).convert("RGB") for r in images[:256]]
        crops = FaceEmbedder.default(on_missing="frame").prepare(crops)
        print("reusing cached embeddings and timings of an earlier full run", flush=True)
    else:
        reused = {}
        crops, found, align_cpu = detect_and_align(pairs, images)
    counts = {d: found.count(d) for d in sorted(set(found))}
    fta = counts.get("none", 0) / len(images)
    speed_x = ALIGNED_PREPROCESS.batch(crops[:256])
    anchor = anchor_throughput(speed_x[:128])
    emb_by_key = {}
    for key, method, model in variants:
        if reused:
            emb, cpu = reused[key][0], reused[key][2]["embed_cpu_s"]
        else:
            emb, cpu = embed_crops(model, crops)
            save_cached_embeddings(model, pairs, images, emb, found, {"align_cpu_s": align_cpu, "embed_cpu_s": cpu})
        emb_by_key[key] = emb
        scores = (emb[a] * emb[b]).sum(1).astype(np.float64)
        m = metric_block(scores, pairs.labels, pairs.folds)
        ips_cpu = len(images) / (align_cpu + cpu)
        raw = throughput(model, speed_x)
        timing = {"img_per_cpu_s": ips_cpu, "align_cpu_s_per_img": align_cpu / len(images),
                  "embed_cpu_s_per_img": cpu / len(images), "model_img_per_s": raw, "anchor_img_per_s": anchor,
                  "speedup_vs_anchor": raw / anchor, "model_mb": model.model_path.stat().st_size / 1e6}
        m.update({"fta": fta, "detectors": counts})
        results[key] = (m, timing, scores)
        write_result(
            "lfw_verification" if key == "float" else "lfw_verification_int8", benchmark="lfw_verification",
            method=method, dataset=DATASET,
            protocol="10-fold accuracy (threshold on the other 9 folds), EER and TAR@FAR over all 6000 pairs; "
                     "held-out unlock: FAR=1e-3 threshold on folds 1-5 applied to 6-10 (a) and reverse (b); "
                     "FTA = images where no detector found a face (aligned with the LFW-frame fallback)",
            seeds=[0], metrics=m, reference=REFERENCE, timing=timing,
            extra={"model_sha256": model.model_hash, "embedder_id": model.embedder_id,
                   "preprocessing": model.preprocessing, "threads": 1, "detector_pick": "benchmarks/lfw_detector_pick.py",
                   "embeddings_and_cpu_timing_from_earlier_full_run": bool(reused)},
        )
        row(key, method, m, ips_cpu, fta)

    # the pre-alignment pipeline (face-crop: LFW framing + tight crop), for comparison
    crop_model = FaceEmbedder.default(detect=False, guard=False)
    hit = load_cached_embeddings(crop_model, pairs, images) if args.reuse_ours else None
    if hit is not None and hit[2]:
        crop_emb, crop_cpu = hit[0], hit[2]["cpu_s"]
    else:
        t = time.process_time()
        crop_emb = np.concatenate([crop_model.embed([load_image(pairs.path(r)) for r in images[i : i + 64]])
                                   for i in range(0, len(images), 64)])
        crop_cpu = time.process_time() - t
        save_cached_embeddings(crop_model, pairs, images, crop_emb, ["crop"] * len(images), {"cpu_s": crop_cpu})
    crop_scores = (crop_emb[a] * crop_emb[b]).sum(1).astype(np.float64)
    m = metric_block(crop_scores, pairs.labels, pairs.folds)
    guard = guard_study(pairs)
    m.update(guard)
    results["crop"] = (m, {"img_per_cpu_s": len(images) / crop_cpu}, crop_scores)
    write_result("lfw_verification_face_crop", benchmark="lfw_verification",
                 method="MobileFaceNet float, face-crop pipeline (no detection: LFW framing + fixed tight crop)",
                 dataset=DATASET, protocol="as lfw_verification; guard rates on 400 images of folds 3-10",
                 seeds=[0], metrics=m, reference=REFERENCE, timing=results["crop"][1],
                 extra={"embedder_id": FaceEmbedder.default(detect=False).embedder_id})
    row("crop", "MobileFaceNet float, face-crop (no alignment; the old pipeline)", m, len(images) / crop_cpu, None)

    # the peer
    peer_note = ""
    compare_md = ""
    why_not = "skipped (--no-peer)" if args.no_peer else peer_mod.available()
    if why_not is None:
        order = fold_order(pairs)
        cache = cache_dir() / PEER_CACHE
        if args.peer_budget_s > 0:
            per = 0.16
            limit = int(args.peer_budget_s / per)
            peer_mod.cached_peer_embeddings(order, pairs.root, cache, limit=limit)
        got = peer_mod.cached_peer_embeddings(order, pairs.root, cache, limit=0)
        pos = {r: i for i, r in enumerate(order)}
        pa, pb = np.array([pos[r] for r in pairs.left]), np.array([pos[r] for r in pairs.right])
        covered = got["done"][pa] & got["done"][pb]
        full_folds = [f for f in range(int(pairs.folds.max()) + 1) if covered[pairs.folds == f].all()]
        if len(full_folds) >= 2:
            keep = np.isin(pairs.folds, full_folds)
            ps = peer_mod.peer_scores(got["emb"], pa, pb)
            done_imgs = [r for r in order if got["done"][pos[r]]]
            peer_fta = 1 - got["found"][got["done"]].mean()
            peer_ips = float(got["n_computed"]) / float(got["cpu_s"])
            pm = metric_block(ps[keep], pairs.labels[keep], pairs.folds[keep])
            pm.update({"fta": float(peer_fta), "folds_covered": [f + 1 for f in full_folds],
                       "accept_at_tolerance_0.6": {"far": float((ps[keep][pairs.labels[keep] == 0] >= -0.6).mean()),
                                                   "tar": float((ps[keep][pairs.labels[keep] == 1] >= -0.6).mean())}})
            ours_same = metric_block(results["float"][2][keep], pairs.labels[keep], pairs.folds[keep])
            int8_same = metric_block(results["int8"][2][keep], pairs.labels[keep], pairs.folds[keep])
            fl_ips = results["float"][1]["img_per_cpu_s"]
            write_result(
                "lfw_verification_peer_face_recognition", benchmark="lfw_verification",
                method="face_recognition default pipeline reproduced with dlib 20 (HOG 1 upsample, 5-point "
                       "landmarks, ResNet v1, num_jitters=1); score = -Euclidean distance",
                dataset=DATASET,
                protocol=f"same metric code as the MobileFaceNet rows, on the folds the peer cache covers "
                         f"({len(full_folds)} of 10: {[f + 1 for f in full_folds]}); k-fold over those folds",
                seeds=[0], metrics={**pm, "ours_float_same_folds": ours_same, "ours_int8_same_folds": int8_same},
                reference={"source": "issue #10: face_recognition on folds 1-5", "metrics": {"accuracy": 0.9857}},
                timing={"img_per_cpu_s": peer_ips, "cpu_s_per_img": 1 / peer_ips,
                        "ours_float_img_per_cpu_s": fl_ips, "speed_ratio_ours_over_peer": fl_ips / peer_ips},
                extra={"images_computed": int(got["n_computed"]), "cache": str(cache.name),
                       "dlib": __import__("dlib").__version__, "note": peer_mod.__doc__.split("\n\n")[1]},
            )
            results["peer"] = (pm, {"img_per_cpu_s": peer_ips}, None)
            fl = f"folds {full_folds[0] + 1}-{full_folds[-1] + 1}" if full_folds == list(range(full_folds[0], full_folds[-1] + 1)) else f"folds {[f + 1 for f in full_folds]}"
            fl = "all 10 folds" if len(full_folds) == int(pairs.folds.max()) + 1 else fl
            row("peer", f"face_recognition (dlib), {fl}", pm, peer_ips, float(peer_fta))
            compare_md = "\n".join([
                f"Same pairs ({fl}, {int(keep.sum())} pairs), same metric code: aligned MobileFaceNet float "
                f"**{ours_same['accuracy']['mean']:.4f}** (int8 {int8_same['accuracy']['mean']:.4f}) vs face_recognition "
                f"**{pm['accuracy']['mean']:.4f}**; TAR@FAR=1e-3 {ours_same['tar@far=1e-3']:.3f} vs {pm['tar@far=1e-3']:.3f}; "
                f"EER {ours_same['eer']:.4f} vs {pm['eer']:.4f}; speed {fl_ips:.1f} vs {peer_ips:.1f} images per CPU-second "
                f"(**{fl_ips / peer_ips:.1f}×**). face_recognition's own 0.6 tolerance on these pairs: "
                f"FAR {pm['accept_at_tolerance_0.6']['far']:.4f}, TAR {pm['accept_at_tolerance_0.6']['tar']:.4f}.",
            ])
        else:
            peer_note = f"peer row skipped: its cache covers {len(full_folds)} complete folds (needs >= 2)"
    else:
        peer_note = f"face_recognition row skipped: {why_not}"

    f_acc = results["float"][0]["accuracy"]["mean"]
    q_acc = results["int8"][0]["accuracy"]["mean"]
    speedup = results["int8"][1]["model_img_per_s"] / results["float"][1]["model_img_per_s"]
    table = markdown_table(
        ["method", "10-fold acc", "EER", "TAR@FAR=1e-3", "held-out FAR a/b", "FTA", "img per CPU-s", "note"], rows)
    g = results["crop"][0]
    md = "\n".join([
        "## Faces: LFW View 2 verification — aligned MobileFaceNet, int8, and face_recognition (`benchmarks/lfw_verification.py`)",
        "",
        "Faces found by MediaPipe Face Mesh (0.10.14; fallbacks: BlazeFace, full-range BlazeFace, Haar; pick in the detector "
        "section) and warped to the 112x112 ArcFace five-point template, then the vendored MobileFaceNet (flip TTA, "
        "1 thread). Who found the faces: " + ", ".join(f"{k} {v}" for k, v in counts.items()) +
        f" of {len(images)} images (FTA {fta:.4f}). img per CPU-s = images / process CPU seconds for decode + detect + "
        "align + embed (the peer: decode + HOG + landmarks + descriptor), so load does not count. The peer is "
        "face_recognition's default pipeline reproduced with dlib (not installed itself; see `biomatch.faces.peer`).",
        "",
        table,
        "",
        compare_md or peer_note,
        "",
        f"int8 vs float (all 10 folds): accuracy {100 * (q_acc - f_acc):+.2f} pt; raw model {speedup:.2f}× faster "
        f"(batch 8, 1 thread; anchor {anchor:.0f} img/s).",
        f"Face-crop guard (400 images of folds 3-10): refuses {g['guard_refused_real_crops']:.3f} of real LFW crops; lets "
        f"through {g['guard_passed_uncropped_half']:.3f} / {g['guard_passed_uncropped_third']:.3f} of synthetic uncropped "
        f"photos with the face at 1/2 / 1/3 of the frame. Enrolling and verifying such half-scale photos of two "
        f"different people: face-crop accepts {g['face_crop_far_uncropped_probe_no_guard']:.3f} of these impostors without the guard, "
        f"{g['face_crop_far_uncropped_probe_with_guard']:.3f} with it (threshold {g['face_crop_threshold']:.4f}).",
        "Held-out FAR at a 1e-3 target is measured on 1500 impostor pairs (1 false accept = 6.7e-4).",
    ])
    update_benchmarks_section("lfw_verification", md)
    print(md)


def fold_order(pairs: LfwPairs) -> list[str]:
    """Unique images in fold order (the peer cache fills whole folds first)."""
    order, seen = [], set()
    for f in range(int(pairs.folds.max()) + 1):
        for i in np.flatnonzero(pairs.folds == f):
            for r in (pairs.left[i], pairs.right[i]):
                if r not in seen:
                    seen.add(r)
                    order.append(r)
    return order


if __name__ == "__main__":
    main()
