"""Benchmark for issue #4: palmprint verification with and without RSM, and the speed anchors.

    python benchmarks/palmprint_rsm.py            # everything (~2-3 min on 2 cores, 1 thread)
    python benchmarks/palmprint_rsm.py --part speed

Writes benchmarks/results/palmprint_rsm_<dataset>_<matcher>.json, palmprint_rsm_speed.json,
figures under benchmarks/results/palmprint_rsm_plots/ and the palmprint_rsm section of
BENCHMARKS.md. Protocol: session 1 = train / enrol / RSM references, session 2 = test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from biomatch.matching.rsm import RSM, rsm_matrix
from biomatch.metrics.verification import eer, verification_report
from biomatch.palmprint.data import DISPLAY_NAMES
from biomatch.palmprint.protocol import MATCHERS, PAIR_SETS, compute_session_scores, make_matcher
from biomatch.palmprint.report import write_plots
from biomatch.results import RESULTS_DIR, markdown_table, update_benchmarks_section, write_result

M_GRID: tuple[int | None, ...] = (5, 10, 30, None)
ALPHA_GRID = (0.0, 0.5, 1.0, 2.0)
REF_SEEDS = (0, 1, 2, 3, 4)
FARS = ("tar@far=1e-2", "tar@far=1e-3", "tar@far=1e-4")
PLOTS = RESULTS_DIR / "palmprint_rsm_plots"
REFERENCE = {
    "source": "RSM paper, CCNet on Tongji (600 palms): EER 0.000042 % -> 0.000036 % with RSM",
    "metrics": {"eer": 4.2e-7, "eer_rsm": 3.6e-7},
}


def _key(m: int | None, alpha: float) -> str:
    return f"M={m or 'all'},alpha={alpha:g}"


def _sweep(ss, pair_set, labels) -> dict[str, dict[str, float]]:
    """EER for every (M, alpha), mean/std over reference-draw seeds (M = all is deterministic)."""
    out = {}
    for m in M_GRID:
        for alpha in ALPHA_GRID:
            seeds = REF_SEEDS if m is not None else (0,)
            vals = [eer(ss.scores(pair_set, RSM(m=m, alpha=alpha, seed=s))[0], labels) for s in seeds]
            out[_key(m, alpha)] = {
                "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "max": float(np.max(vals)), "n": len(vals),
            }
    return out


def run_palmprint(n_boot: int) -> list[dict]:
    rows = []
    for dataset in ("tongji", "polyu"):
        for key in MATCHERS:
            t0 = time.perf_counter()
            # issue #4's record: the learned matcher's references are its own training images (the leak
            # issue #9 measured); kept as it was, explicitly allowed. TongjiFull: benchmarks/palmprint_full.py
            ss = compute_session_scores(make_matcher(key, seed=0), dataset, allow_training_refs=True)
            score_s = time.perf_counter() - t0
            record: dict = {"pair_sets": {}}
            metrics: dict = {}
            for pair_set in PAIR_SETS:
                plain, labels = ss.scores(pair_set)
                t1 = time.perf_counter()
                rescored, _ = ss.scores(pair_set, RSM())
                rsm_s = time.perf_counter() - t1
                rep_p = verification_report(plain, labels, n_boot=n_boot, seed=0)
                rep_r = verification_report(rescored, labels, n_boot=n_boot, seed=0)
                sweep = _sweep(ss, pair_set, labels)
                default = sweep["M=30,alpha=1"]
                record["pair_sets"][pair_set] = {"plain": rep_p, "rsm_M30_alpha1_seed0": rep_r, "sweep_eer": sweep, "rsm_s": rsm_s}
                if pair_set == "all-vs-all":
                    metrics = {
                        "eer": rep_p["eer"], "eer_rsm": rep_r["eer"],
                        "eer_rsm_mean_over_ref_seeds": default["mean"],
                        **{k: rep_p[k] for k in FARS}, **{f"{k}_rsm": rep_r[k] for k in FARS},
                    }
                    write_plots(ss, pair_set, RSM(), PLOTS, f"{dataset}_{key}")
                rows.append({
                    "dataset": dataset, "matcher": ss.matcher, "pairs": pair_set,
                    "plain": rep_p, "rsm": rep_r, "sweep": sweep,
                })
            write_result(
                f"palmprint_rsm_{dataset}_{key}",
                benchmark="palmprint_rsm", method=f"{ss.matcher} (+ RSM M=30, alpha=1)",
                dataset=DISPLAY_NAMES[dataset],
                protocol="session 1 = train/enrol/RSM references, session 2 = test; all-vs-all test pairs "
                "(metrics) and test-vs-enrolled (extra); EER by linear interpolation; 95% bootstrap CI "
                f"({n_boot} stratified resamples, pairs treated as independent)",
                seeds=[0], metrics=metrics, reference=REFERENCE,
                timing={"encode_and_score_s": score_s}, extra=record,
            )
            print(f"{dataset} {ss.matcher}: EER {metrics['eer']:.4f} -> RSM {metrics['eer_rsm']:.4f}", flush=True)
    return rows


# ----------------------------------------------------------------------------- speed


def _loop_rsm(d: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    out = np.zeros(d.shape)
    for i in range(d.shape[0]):
        for j in range(d.shape[1]):
            out[i, j] = sum(abs(a[i, k] - b[j, k]) for k in range(a.shape[1])) / a.shape[1] + alpha * d[i, j]
    return out


def speed() -> dict:
    """Runs in a fresh process (so peak RSS means something); prints a JSON dict."""
    from sklearn.metrics import roc_curve as sk_roc

    torch.set_num_threads(1)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gen = torch.Generator().manual_seed(0)
    n_items, m, dim = 10_000, 30, 128
    x = torch.nn.functional.normalize(torch.randn(n_items, dim, generator=gen), dim=1)
    refs = torch.nn.functional.normalize(torch.randn(m, dim, generator=gen), dim=1)
    t = time.perf_counter()
    direct = ((1 - x @ x.T) * 0.5).clamp_(0, 1)
    to_refs = ((1 - x @ refs.T) * 0.5).clamp_(0, 1)
    direct_s = time.perf_counter() - t
    block = 40
    d_small, a_small = direct[:block, :block].double().clone(), to_refs[:block].double()
    t = time.perf_counter()
    rsm_matrix(direct, to_refs, to_refs, alpha=1.0, out=direct, chunk_size=1024)
    rsm_s = time.perf_counter() - t
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    loop = _loop_rsm(d_small.numpy(), a_small.numpy(), a_small.numpy(), 1.0)
    loop_s = time.perf_counter() - t
    vec = rsm_matrix(d_small, a_small, a_small, alpha=1.0).numpy()
    del direct, to_refs, x
    rng = np.random.default_rng(0)
    n = 10**7
    labels = (rng.random(n) < 0.01).astype(np.int8)
    scores = rng.normal(size=n) + 3.0 * labels
    t = time.perf_counter()
    ours = eer(scores, labels)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    far, tar, _ = sk_roc(labels, scores, drop_intermediate=False)
    d = (1 - tar) - far
    k = int(np.argmax(d <= 0))
    w = d[k - 1] / (d[k - 1] - d[k])
    sk_eer = far[k - 1] + w * (far[k] - far[k - 1])
    sk_s = time.perf_counter() - t

    return {
        "eer_1e7_ours_s": ours_s, "eer_1e7_sklearn_roc_curve_s": sk_s, "eer_speedup": sk_s / ours_s,
        "eer_abs_diff_vs_sklearn": abs(ours - sk_eer), "eer_value": ours,
        "rsm_10k_M30_s": rsm_s, "rsm_direct_and_ref_dissimilarities_s": direct_s,
        "rsm_peak_rss_mb": peak_rss, "rss_before_rsm_mb": base_rss,
        "rsm_output_mb": n_items * n_items * 4 / 2**20,
        "rsm_loop_block": block, "rsm_loop_max_abs_diff": float(np.abs(loop - vec).max()),
        "rsm_loop_extrapolated_10k_s": loop_s * (n_items / block) ** 2,
        "torch_threads": torch.get_num_threads(),
    }


def run_speed() -> dict:
    out = subprocess.run([sys.executable, __file__, "--part", "speed-child"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    write_result(
        "palmprint_rsm_speed", benchmark="palmprint_rsm_speed", method="sort-once EER; chunked cdist(p=1) RSM",
        dataset="synthetic (seed 0): 10^7 scores (1 % genuine); 10k x 128-d unit embeddings, 30 references",
        protocol="same run: ours vs sklearn roc_curve (+ the same interpolation); RSM in place vs a Python loop "
        "on a 40 x 40 block (float64), loop time extrapolated to 10k x 10k; 1 torch thread",
        seeds=[0], metrics={"eer_abs_diff_vs_sklearn": result["eer_abs_diff_vs_sklearn"],
                            "rsm_loop_max_abs_diff": result["rsm_loop_max_abs_diff"]},
        reference={"source": "DESIGN.md speed anchors", "metrics": {"sklearn_roc_curve_s": 3.3, "rsm_cdist_s": 1.25}},
        timing=result,
    )
    print(json.dumps(result, indent=1), flush=True)
    return result


# ----------------------------------------------------------------------------- markdown


def _ci(rep: dict) -> str:
    return f"{rep['eer']:.4f} [{rep['eer_ci_low']:.4f}, {rep['eer_ci_high']:.4f}]"


def _tar(rep: dict, key: str) -> str:
    return "undef." if rep[key] is None else f"{rep[key]:.3f}"


def markdown(rows: list[dict], sp: dict, n_boot: int) -> str:
    main = []
    for r in rows:
        p, q, sw = r["plain"], r["rsm"], r["sweep"]
        seeds = sw["M=30,alpha=1"]
        verdict = "lower" if seeds["max"] < p["eer"] else ("same" if seeds["max"] == p["eer"] else "**higher for some seed**")
        main.append([
            r["dataset"], r["matcher"], r["pairs"], _ci(p), _ci(q),
            f"{seeds['mean']:.4f} ± {seeds['std']:.4f} ({verdict})",
            f"{_tar(p, FARS[0])} / {_tar(q, FARS[0])}", f"{_tar(p, FARS[1])} / {_tar(q, FARS[1])}",
            f"{p['d_prime']:.2f} / {q['d_prime']:.2f}",
        ])
    header = ["dataset", "matcher", "pairs", "EER plain [95% CI]", "EER RSM M=30 α=1 seed 0 [CI]",
              "EER RSM, 5 ref. seeds", "TAR@1e-2 plain / RSM", "TAR@1e-3 plain / RSM", "d′ plain / RSM"]
    sweep_rows = []
    for r in rows:
        if r["pairs"] != "all-vs-all":
            continue
        cells = [r["dataset"], r["matcher"], f"{r['plain']['eer']:.4f}"]
        for m in M_GRID:
            cells.append(" / ".join(f"{r['sweep'][_key(m, a)]['mean']:.4f}" for a in ALPHA_GRID))
        sweep_rows.append(cells)
    sweep_header = ["dataset", "matcher", "plain"] + [f"M={m or 'all'}: α=0 / 0.5 / 1 / 2" for m in M_GRID]
    speed_rows = [
        ["EER over 10^7 scores", f"{sp['eer_1e7_ours_s']:.2f} s", f"sklearn roc_curve {sp['eer_1e7_sklearn_roc_curve_s']:.2f} s",
         f"{sp['eer_speedup']:.1f}×", f"EER difference {sp['eer_abs_diff_vs_sklearn']:.1e}"],
        ["RSM 10k × 10k, M = 30 (in place)", f"{sp['rsm_10k_M30_s']:.2f} s",
         f"Python loop ≈ {sp['rsm_loop_extrapolated_10k_s']:.0f} s (extrapolated from 40 × 40)",
         f"{sp['rsm_loop_extrapolated_10k_s'] / sp['rsm_10k_M30_s']:.0f}×",
         f"max abs. difference vs loop {sp['rsm_loop_max_abs_diff']:.1e}; process peak RSS {sp['rsm_peak_rss_mb']:.0f} MB "
         f"(of which before RSM {sp['rss_before_rsm_mb']:.0f} MB; one 10k² float32 matrix = {sp['rsm_output_mb']:.0f} MB)"],
    ]
    return "\n\n".join([
        "## Palmprint verification with RSM (issue #4)",
        "`python benchmarks/palmprint_rsm.py` · session 1 = train / enrol / RSM references, session 2 = test · "
        "10 palms per dataset: Tongji 450 genuine / 4500 impostor all-vs-all pairs, PolyU 150 / 1620 · "
        f"EER by linear interpolation, CI = 95 % stratified bootstrap ({n_boot} resamples; pairs share images, "
        "so the CI is optimistic) · TAR@FAR undefined when impostor pairs < 1/FAR · reference (RSM paper, "
        "CCNet on full Tongji): EER 0.000042 % → 0.000036 %.",
        markdown_table(header, main),
        "RSM sweep, all-vs-all EER (mean over 5 reference-draw seeds; M = all is deterministic):",
        markdown_table(sweep_header, sweep_rows),
        f"Speed (same run, {sp['torch_threads']} torch thread; DESIGN.md anchors: sklearn 3.3 s, cdist RSM 1.25 s):",
        markdown_table(["work", "ours", "anchor", "speed-up", "check"], speed_rows),
        NOTES,
    ])


NOTES = """Where RSM (M = 30, α = 1) does **not** lower the EER, and why:
- CompCode with shifts and PalmNet on PolyU are already perfect (EER 0): RSM keeps 0 and raises d′ for CompCode.
- PalmNet+ArcFace on Tongji: 0.0387 → 0.0384 (seed 0) but 0.0391 ± 0.0035 over reference draws; test-vs-enrolled
  0.0712 → 0.0738. The references are session-1 images, i.e. the CNN's own training images, which ArcFace has
  pulled onto their 10 class centres: the profile "distance to each reference" is then nearly a function of the
  direct cosine distance and adds draw noise rather than information (d′ also drops test-vs-enrolled). All changes
  are inside the bootstrap CI. References not seen in training (other palms) should be tried when available.
- CompCode without shifts on PolyU: 0.0600 → 0.0600 (seed 0), 0.0633 ± 0.0046 over draws (only 60 references,
  3 per palm at M = 30); with all 60 references and α ∈ {0.5, 1} it lowers to 0.055 / 0.053. Misalignment, the
  cause of this matcher's errors, also distorts the distances to the references, so RSM cannot undo it.
- α = 0 (relative term only) is worse than plain for every matcher with few references: the direct term is needed.
- On test-vs-enrolled CompCode (no shift) Tongji, EER drops but TAR@1e-2/1e-3 drop too: RSM reorders the tails
  differently from the EER region; report both.
Figures (all-vs-all, M = 30, α = 1): `benchmarks/results/palmprint_rsm_plots/<dataset>_<matcher>_{hist,roc,det,trouble}.png`."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["all", "speed", "speed-child", "palm", "markdown"], default="all")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    if args.part == "speed-child":
        print(json.dumps(speed()))
        return
    torch.set_num_threads(1)
    sp = run_speed() if args.part in ("all", "speed") else json.loads((RESULTS_DIR / "palmprint_rsm_speed.json").read_text())["timing"]
    if args.part == "speed":
        return
    rows_path = RESULTS_DIR / "raw" / "palmprint_rsm_rows.json"  # raw rows, not a result record
    if args.part == "markdown":  # re-render from the saved rows
        rows = json.loads(rows_path.read_text())
    else:
        rows = run_palmprint(args.n_boot)
        rows_path.write_text(json.dumps(rows, indent=1) + "\n")
    update_benchmarks_section("palmprint_rsm", markdown(rows, sp, args.n_boot))


if __name__ == "__main__":
    main()
