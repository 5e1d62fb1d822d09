"""Benchmark for issue #9: TongjiFull (600 palms) closed and open set, CompCode vs learned networks, RSM.

    python benchmarks/palmprint_full.py --part scores     # encode + all dissimilarities (cached)
    python benchmarks/palmprint_full.py --part eval       # tuning on validation palms, metrics, plots, results
    python benchmarks/palmprint_full.py --part speed      # 36 M-score EER + RSM seconds / peak memory (fresh process)
    python benchmarks/palmprint_full.py --part markdown   # re-render the BENCHMARKS.md section

The learned matchers must be trained first (benchmarks/palmprint_train.py). Writes
benchmarks/results/palmprint_full_<protocol>_<matcher>.json, palmprint_full_speed.json,
figures under benchmarks/results/palmprint_full_plots/ and the palmprint_full section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from biomatch.metrics.verification import eer
from biomatch.palmprint.data import DISPLAY_NAMES, load_rois_cached, load_samples
from biomatch.palmprint.full import FARS, ScoreMatrices, pair_arrays, palm_bootstrap_eer, score_split, summary
from biomatch.palmprint.splits import PROTOCOLS, make_split, validation_split
from biomatch.paths import cache_dir
from biomatch.results import RESULTS_DIR, markdown_table, update_benchmarks_section, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
from palmprint_train import checkpoint_path  # noqa: E402

MATCHERS = ("compcode", "compnet", "compnet_gpu", "palmnet")
M_GRID: tuple[int | None, ...] = (10, 30, 100, 300)
ALPHA_GRID = (0.5, 1.0, 2.0, 4.0)
REF_SEEDS = (0, 1, 2, 3, 4)
DEFAULT = (30, 1.0)
PLOTS = RESULTS_DIR / "palmprint_full_plots"
ROWS_DIR = RESULTS_DIR / "raw"  # raw rows (not result records), one per protocol x matcher
REFERENCE = {
    "source": "RSM paper (CCNet on Tongji, 600 palms, closed set): EER 0.000042 % -> 0.000036 % with RSM",
    "metrics": {"eer": 4.2e-7, "eer_rsm": 3.6e-7},
}


def _scores_path(matcher: str, protocol: str) -> Path:
    return cache_dir() / "palmprint" / f"scores_{matcher}_{protocol}.pt"


def _load_matcher(key: str, protocol: str):
    """(matcher, its training samples' protocol) — the open-set net also scores the validation split."""
    if key == "compcode":
        from biomatch.palmprint.compcode import CompCode

        return CompCode()
    ckpt_protocol = "open" if protocol == "validation" else protocol
    ckpt = checkpoint_path(ckpt_protocol, key)
    if key.startswith("compnet"):  # compnet (CPU-trained) or compnet_gpu (benchmarks/palmprint_gpu_import.py)
        from biomatch.palmprint.ccnet import CompNetMatcher

        return CompNetMatcher.load(ckpt, name=f"CompNet-lite ({'GPU' if key.endswith('gpu') else 'CPU'}-trained)")
    from biomatch.palmprint.learned import LearnedMatcher

    return LearnedMatcher.load(ckpt)


def _compcode_codes(samples, rois) -> torch.Tensor:
    from biomatch.palmprint.compcode import CompCode

    path = cache_dir() / "palmprint" / f"compcode_codes_{len(samples)}.pt"
    if path.is_file():
        return torch.load(path).float()
    t = time.perf_counter()
    codes = CompCode().encode(rois)
    torch.save(codes.to(torch.uint8), path)
    print(f"CompCode: encoded {len(samples)} ROIs in {time.perf_counter() - t:.0f} s", flush=True)
    return codes


def run_scores(matchers: list[str]) -> None:
    torch.set_num_threads(1)
    samples = load_samples("tongji_full")
    rois = load_rois_cached(samples)
    for key in matchers:
        codes = _compcode_codes(samples, rois) if key == "compcode" else None
        for protocol in (*PROTOCOLS, "validation"):
            path = _scores_path(key, protocol)
            if path.is_file():
                continue
            split = validation_split(samples) if protocol == "validation" else make_split(samples, protocol)
            trained_on = [] if key == "compcode" else make_split(samples, "open" if protocol == "validation" else protocol).train
            t = time.perf_counter()
            sm = score_split(_load_matcher(key, protocol), split, samples, rois, trained_on=trained_on, codes=codes)
            sm.save(path)
            print(f"{key} {protocol}: {tuple(sm.direct.shape)} scored in {time.perf_counter() - t:.0f} s", flush=True)
            meta = path.with_suffix(".json")
            meta.write_text(json.dumps({"score_s": time.perf_counter() - t}))


# ----------------------------------------------------------------------------- evaluation


def _key(m: int | None, alpha: float) -> str:
    return f"M={m or 'all'},alpha={alpha:g}"


def tune(sm: ScoreMatrices) -> tuple[dict, tuple[int | None, float]]:
    """EER on the validation palms for every (M, alpha), mean over reference draws; pick the lowest
    (ties: nearest to the default M=30, alpha=1)."""
    s0, g = pair_arrays(sm.direct, sm.probe_palms, sm.gallery_palms)
    plain = eer(s0, g)
    table = {"plain": plain}
    for m in M_GRID:
        for alpha in ALPHA_GRID:
            seeds = REF_SEEDS if m is not None else (0,)
            vals = [eer(pair_arrays(sm.rsm(m, alpha, s), sm.probe_palms, sm.gallery_palms)[0], g) for s in seeds]
            table[_key(m, alpha)] = float(np.mean(vals))
    cands = [(table[_key(m, a)], abs(np.log((m or 500) / 30)) + abs(np.log(a)), m, a) for m in M_GRID for a in ALPHA_GRID]
    best = min(cands)
    return table, (best[2], best[3])


def evaluate(key: str, protocol: str, choice: tuple[int | None, float], n_boot: int) -> dict:
    sm = ScoreMatrices.load(_scores_path(key, protocol))
    m, alpha = choice
    t = time.perf_counter()
    plain = summary(sm.direct, sm.probe_palms, sm.gallery_palms)
    plain_s = time.perf_counter() - t
    plain.update(palm_bootstrap_eer(sm.direct, sm.probe_palms, sm.gallery_palms, n_boot=n_boot, seed=0, point_eer=plain["eer"]))
    labels = (sm.probe_palms[:, None] == sm.gallery_palms[None, :]).ravel()
    eers, rsm0, rsm_s = [], None, []
    for seed in REF_SEEDS:
        t = time.perf_counter()
        mat = sm.rsm(m, alpha, seed)
        rsm_s.append(time.perf_counter() - t)
        if seed == 0:
            rsm0 = summary(mat, sm.probe_palms, sm.gallery_palms)
            rsm0.update(palm_bootstrap_eer(mat, sm.probe_palms, sm.gallery_palms, n_boot=n_boot, seed=0, point_eer=rsm0["eer"]))
            eers.append(rsm0["eer"])
            from biomatch.palmprint.full_report import write_figures

            figs = write_figures(sm, mat, f"RSM (M={m or 'all'}, α={alpha:g}, draw 0)", PLOTS, f"{protocol}_{key}")
        else:
            eers.append(eer(-mat.numpy().astype(np.float64).ravel(), labels))
        del mat
    return {"plain": plain, "rsm_seed0": rsm0, "rsm_eers": eers, "plain_metrics_s": plain_s,
            "rsm_s_mean": float(np.mean(rsm_s)), "figures": [str(f.relative_to(RESULTS_DIR.parent.parent)) for f in figs],
            "refs_note": sm.refs_note, "n_refs": int(sm.probe_refs.shape[1]), "matcher_name": sm.matcher}


def _train_meta(key: str, protocol: str) -> dict:
    if key == "compcode":
        return {}
    meta = json.loads(checkpoint_path(protocol, key).with_suffix(".json").read_text())
    return {k: v for k, v in meta.items() if k != "history"}


def run_eval(matchers: list[str], n_boot: int, protocols: tuple[str, ...] = PROTOCOLS) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for key in matchers:
        tune_cache = _scores_path(key, "validation").with_suffix(".tune.json")
        if tune_cache.is_file():
            cached = json.loads(tune_cache.read_text())
            table, choice = cached["table"], (cached["m"], cached["alpha"])
        else:
            table, choice = tune(ScoreMatrices.load(_scores_path(key, "validation")))
            tune_cache.write_text(json.dumps({"table": table, "m": choice[0], "alpha": choice[1]}))
        print(f"{key}: validation choice M={choice[0]}, alpha={choice[1]} ({table[_key(*choice)]:.5f} vs plain {table['plain']:.5f})", flush=True)
        for protocol in protocols:
            res = evaluate(key, protocol, choice, n_boot)
            train = _train_meta(key, protocol)
            p, r, e = res["plain"], res["rsm_seed0"], res["rsm_eers"]
            mean_e, std_e = float(np.mean(e)), float(np.std(e, ddof=1))
            verdict = "lower" if mean_e < p["eer"] else ("equal" if mean_e == p["eer"] else "higher")
            metrics = {
                "eer": p["eer"], "eer_ci_low": p["eer_ci_low"], "eer_ci_high": p["eer_ci_high"],
                "eer_rsm_mean_over_ref_seeds": mean_e, "eer_rsm_std_over_ref_seeds": std_e, "eer_rsm_per_seed": e,
                "rsm_vs_plain": verdict, "rank1": p["rank1"], "rank1_rsm": r["rank1"],
                "d_prime": p["d_prime"], "d_prime_rsm": r["d_prime"],
                **{f"tar@far={f:.0e}".replace("e-0", "e-"): p[f"tar@far={f:.0e}".replace("e-0", "e-")] for f in FARS},
                **{f"tar@far={f:.0e}_rsm".replace("e-0", "e-"): r[f"tar@far={f:.0e}".replace("e-0", "e-")] for f in FARS},
                "n_genuine": p["n_genuine"], "n_impostor": p["n_impostor"],
            }
            rec = {"matcher": key, "protocol": protocol, "metrics": metrics, "rsm_choice": {"m": choice[0], "alpha": choice[1]},
                   "validation_sweep": table, "train": train, **{k: v for k, v in res.items() if k not in ("plain", "rsm_seed0")},
                   "plain": p, "rsm": r}
            write_result(
                f"palmprint_full_{protocol}_{key}", benchmark="palmprint_full",
                method=f"{res['matcher_name']} (+ RSM M={choice[0] or 'all'}, alpha={choice[1]:g})",
                dataset=DISPLAY_NAMES["tongji_full"], protocol=_protocol_text(protocol),
                seeds=list(REF_SEEDS), metrics=metrics, reference=REFERENCE,
                timing={"plain_metrics_s": res["plain_metrics_s"], "rsm_s_mean": res["rsm_s_mean"],
                        **({"train_s": train.get("train_s", 0.0), "train_device": train.get("device", "cpu"), "train_threads": train.get("threads", 1)} if train else {})},
                extra={"rsm_references": res["refs_note"], "n_references": res["n_refs"], "rsm_choice": rec["rsm_choice"],
                       "validation_sweep_eer": table, "train": train, "figures": res["figures"], "plain": p, "rsm_draw0": r},
            )
            print(f"{protocol} {key}: EER {p['eer']:.6f} -> RSM {mean_e:.6f} ± {std_e:.6f}; rank-1 {p['rank1']:.4f}", flush=True)
            rows.append(rec)
            ROWS_DIR.mkdir(parents=True, exist_ok=True)
            (ROWS_DIR / f"palmprint_full_row_{protocol}_{key}.json").write_text(json.dumps(rec, indent=1, default=float) + "\n")
    return rows


def _protocol_text(protocol: str) -> str:
    if protocol == "closed":
        return ("closed set: networks train on session-1 images 1-9 of all 600 palms; every session-2 image (6,000 probes) "
                "vs every session-1 image (6,000 gallery) = 36 M scores, 60,000 genuine; RSM references = session-1 image 10 "
                "of each palm (held out of training); M and alpha chosen on validation palms of the open set")
    return ("open set: networks train on palms 0-249 (both sessions); palms 250-299 = validation (RSM references, M/alpha "
            "choice); test palms 300-599: session 1 enrols (3,000), session 2 probes (3,000) = 9 M scores, 30,000 genuine")


# ----------------------------------------------------------------------------- speed


def speed() -> dict:
    """Fresh process: 36 M-score EER plain + RSM (M=30, alpha=1) + EER on the cached closed-set CompCode matrices."""
    torch.set_num_threads(1)
    sm = ScoreMatrices.load(_scores_path("compcode", "closed"))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    labels = (sm.probe_palms[:, None] == sm.gallery_palms[None, :]).ravel()
    cpu0 = time.process_time()
    t = time.perf_counter()
    e_plain = eer(-sm.direct.numpy().ravel(), labels)
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    mat = sm.rsm(30, 1.0, 0)
    rsm_s = time.perf_counter() - t
    t = time.perf_counter()
    e_rsm = eer(-mat.numpy().ravel(), labels)
    rsm_eer_s = time.perf_counter() - t
    cpu_s = time.process_time() - cpu0
    return {"n_scores": int(labels.size), "cpu_s_total": cpu_s, "load_1min": os.getloadavg()[0], "eer_plain_s": plain_s, "rsm_M30_s": rsm_s, "eer_rsm_s": rsm_eer_s,
            "eer_plus_rsm_total_s": plain_s + rsm_s + rsm_eer_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_loading_mb": base, "eer": e_plain, "eer_rsm": e_rsm, "torch_threads": torch.get_num_threads()}


def run_speed() -> dict:
    out = subprocess.run([sys.executable, __file__, "--part", "speed-child"], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    write_result(
        "palmprint_full_speed", benchmark="palmprint_full_speed", method="metrics.verification.eer + matching.rsm (M=30, alpha=1)",
        dataset=DISPLAY_NAMES["tongji_full"], protocol="closed set, CompCode dissimilarities (cached), 6,000 x 6,000 = 36 M scores; "
        "plain EER, RSM re-scoring and EER of the re-scored matrix in one fresh process, 1 torch thread; peak RSS of that process",
        seeds=[0], metrics={"eer_plus_rsm_total_s": res["eer_plus_rsm_total_s"], "peak_rss_mb": res["peak_rss_mb"]},
        reference={"source": "issue #9 target", "metrics": {"total_s": 60, "peak_mb": 4096}}, timing=res,
    )
    print(json.dumps(res, indent=1), flush=True)
    return res


# ----------------------------------------------------------------------------- markdown


def _pct(x: float | None, digits: int = 3) -> str:
    return "undef." if x is None else f"{100 * x:.{digits}f} %"


def _training_text(train: dict) -> str:
    """'96 s, 80 ep. (NVIDIA H200)' or '1611 s, 8 ep. (cpu, 1 thr.)'; 'none' for CompCode."""
    if not train:
        return "none"
    device = train.get("device", "cpu")
    where = f"cpu, {train['threads']} thr." if device == "cpu" else device
    return f"{train['train_s']:.0f} s, {train['epochs']} ep. ({where})"


def markdown(rows: list[dict], sp: dict | None) -> str:
    table = []
    for r in rows:
        mt = r["metrics"]
        ch = r["rsm_choice"]
        tr = r["train"]
        table.append([
            r["protocol"], r.get("matcher_name", r["matcher"]),
            f"{_pct(mt['eer'])} [{_pct(mt['eer_ci_low'])}, {_pct(mt['eer_ci_high'])}]",
            f"{_pct(mt['eer_rsm_mean_over_ref_seeds'])} ± {_pct(mt['eer_rsm_std_over_ref_seeds'])} ({mt['rsm_vs_plain']})",
            f"M={ch['m'] or 'all'}, α={ch['alpha']:g}",
            " / ".join(f"{mt[k]:.4f}" if mt[k] is not None else "undef." for k in ("tar@far=1e-3", "tar@far=1e-4", "tar@far=1e-5")),
            f"{mt['rank1']:.4f} / {mt['rank1_rsm']:.4f}", f"{mt['d_prime']:.2f} / {mt['d_prime_rsm']:.2f}",
            _training_text(tr),
        ])
    header = ["protocol", "matcher", "EER [95 % CI, palms resampled]", "EER with RSM, 5 ref. draws", "RSM (chosen on val.)",
              "TAR@FAR 1e-3 / 1e-4 / 1e-5", "rank-1 plain / RSM", "d′ plain / RSM", "training"]
    sweep = []
    seen = set()
    for r in rows:
        if r["matcher"] in seen:
            continue
        seen.add(r["matcher"])
        t = r["validation_sweep"]
        sweep.append([r["matcher"], f"{_pct(t['plain'])}"] + [" / ".join(_pct(t[_key(m, a)], 2) for a in ALPHA_GRID) for m in M_GRID])
    parts = [
        "## Palmprints at full scale: TongjiFull, 600 palms (issue #9)",
        "`python benchmarks/palmprint_train.py --protocol {closed,open} --model {compnet,palmnet}` then "
        "`python benchmarks/palmprint_full.py` · closed set: 6,000 session-2 probes × 6,000 session-1 images = 36 M scores "
        "(60,000 genuine); open set: palms 300–599, 3,000 × 3,000 = 9 M scores (30,000 genuine) · EER by linear "
        "interpolation; CI = 95 % percentile bootstrap resampling **palms** (a palm drawn c times weighs c² on its "
        "genuine pairs) · RSM references: closed set = session-1 image 10 of each palm (held out of the networks' "
        "training, not a test image; a pair's own enrolled image is left out); open set = validation palms 250–299 "
        "(never trained on) · M and α chosen per matcher on validation palms 250–274 with references 275–299, "
        "never on test · RSM EER = mean ± std over reference draws 0–4 · reference (RSM paper, CCNet, closed set): "
        "EER 0.000042 % → 0.000036 %.",
        markdown_table(header, table),
        "Validation sweep (palms 250–274 probes/gallery, references 275–299; mean EER over 5 draws), α = 0.5 / 1 / 2 / 4:",
        markdown_table(["matcher", "plain"] + [f"M={m}" for m in M_GRID], sweep),
    ]
    fusion = [json.loads((ROWS_DIR / f"palmprint_fusion_row_{pr}.json").read_text()) for pr in PROTOCOLS
              if (ROWS_DIR / f"palmprint_fusion_row_{pr}.json").is_file()]
    if len(fusion) == len(PROTOCOLS):
        parts.append("Extra (no RSM; `python benchmarks/palmprint_fusion.py`): CompCode + CompNet-lite score fusion, "
                     f"weight {fusion[0]['w']:g} on CompCode chosen on validation palms: " + "; ".join(
                         f"{pr} set EER {_pct(f['eer'])} [{_pct(f['eer_ci_low'])}, {_pct(f['eer_ci_high'])}], "
                         f"TAR@FAR 1e-5 {f['tar@far=1e-5']:.4f}, rank-1 {f['rank1']:.4f}" for pr, f in zip(PROTOCOLS, fusion)) + ".")
    if sp:
        parts.append(
            f"Speed (fresh process, {sp['torch_threads']} torch thread, shared 2-core machine): 36 M-score EER "
            f"{sp['eer_plain_s']:.1f} s + RSM M=30 {sp['rsm_M30_s']:.1f} s + EER of the re-scored scores "
            f"{sp['eer_rsm_s']:.1f} s = **{sp['eer_plus_rsm_total_s']:.1f} s** wall ({sp['cpu_s_total']:.1f} s of CPU time; "
            f"1-min load {sp['load_1min']:.1f} on 2 cores while it ran), peak RSS **{sp['peak_rss_mb']:.0f} MB** "
            f"(target < 60 s, < 4 GB)."
        )
    parts.append(NOTES)
    return "\n\n".join(parts)


NOTES_PATH = Path(__file__).with_name("palmprint_full_notes.md")
NOTES = NOTES_PATH.read_text() if NOTES_PATH.is_file() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["all", "scores", "eval", "speed", "speed-child", "markdown", "figures"], default="all")
    parser.add_argument("--matchers", default=",".join(MATCHERS))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--n-boot", type=int, default=200)
    args = parser.parse_args()
    matchers = [m for m in args.matchers.split(",") if m]
    if args.part == "speed-child":
        print(json.dumps(speed()))
        return
    speed_path = RESULTS_DIR / "palmprint_full_speed.json"
    if args.part in ("all", "scores"):
        run_scores(matchers)
    if args.part in ("all", "speed"):
        run_speed()
    if args.part == "figures":  # redraw one protocol x matcher's figures from the cached matrices
        from biomatch.palmprint.full_report import write_figures

        torch.set_num_threads(1)
        for key in matchers:
            tuned = json.loads(_scores_path(key, "validation").with_suffix(".tune.json").read_text())
            for protocol in (p for p in args.protocols.split(",") if p):
                sm = ScoreMatrices.load(_scores_path(key, protocol))
                name = f"RSM (M={tuned['m'] or 'all'}, α={tuned['alpha']:g}, draw 0)"
                print(write_figures(sm, sm.rsm(tuned["m"], tuned["alpha"], 0), name, PLOTS, f"{protocol}_{key}"), flush=True)
        return
    if args.part in ("all", "eval"):
        run_eval(matchers, args.n_boot, tuple(p for p in args.protocols.split(",") if p))
    if args.part in ("all", "eval", "markdown", "speed"):
        rows = [json.loads(f.read_text()) for f in sorted(ROWS_DIR.glob("palmprint_full_row_*.json"))]
        order = {m: i for i, m in enumerate(MATCHERS)}
        rows.sort(key=lambda r: (PROTOCOLS.index(r["protocol"]), order.get(r["matcher"], 9)))
        sp = json.loads(speed_path.read_text())["timing"] if speed_path.is_file() else None
        if rows:
            update_benchmarks_section("palmprint_full", markdown(rows, sp))


if __name__ == "__main__":
    main()
