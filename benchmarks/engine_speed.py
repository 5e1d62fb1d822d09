"""Engine speed: every speed claim of the evaluation engine timed against its anchor in one run.

Each row times ours and its anchor in the same process, interleaved (ours, anchor, ours, ...),
and keeps the minimum of the repetitions; threads are pinned (torch, faiss, BLAS) and recorded,
and the machine's load average is recorded before and after every row, so the ratios hold on
this machine at this load while absolute seconds are upper bounds on a shared machine.

- retrieval metrics (R@1/5/10, mean and median first rank, mAP over the whole gallery) vs
  pytorch-metric-learning's AccuracyCalculator (precision_at_1, mean_average_precision_at_r,
  r_precision, k="max_bin_count"), plus a scaling table over N x N with log-log slopes;
- EER over 10^7 scores vs sklearn roc_curve + the same linear interpolation, with and without ties;
- RSM 10k x 10k, M = 30 vs one unchunked torch.cdist(p=1) and the naive loop (extrapolated);
  also RSM + EER over 6,000 x 6,000 (the palmprint protocol's size) for time and peak memory;
- 1:N search at 1e5 and 1e6 face-like templates: exact torch vs faiss IndexFlatIP and numpy, and
  IVF / HNSW speed and template-level top-1 parity with exact search over nprobe / efSearch.

    python benchmarks/engine_speed.py            # full run (~20 min on an idle 2-core machine)
    python benchmarks/engine_speed.py --quick    # smoke run, small sizes, nothing written
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes; results are printed, not written")
    p.add_argument("--threads", type=int, default=1, help="threads for torch, faiss and BLAS (recorded)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions per row (min is kept)")
    p.add_argument("--big-reps", type=int, default=1,
                   help="repetitions of the 50k x 50k retrieval row (one pair of runs takes minutes here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=["retrieval", "eer", "rsm", "search"], default=None)
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:  # before numpy / torch start their thread pools
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from biomatch.results import markdown_table, update_benchmarks_section, write_result  # noqa: E402

DIM = 128


# ----------------------------------------------------------------------------- measuring


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def interleaved(fns: dict[str, Callable[[], Any]], reps: int) -> tuple[dict[str, float], dict[str, list[float]], dict[str, Any]]:
    """Run each callable `reps` times, interleaved; (min seconds, all seconds, last result) per name."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    out: dict[str, Any] = {}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}, times, out


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_mb(task: str, **kwargs: Any) -> tuple[float | None, float | None]:
    """(peak RSS above the RSS once the inputs exist, absolute peak RSS), in MB, of one call of
    `task` run in a fresh interpreter (spawn): a long-lived process would reuse memory it
    freed earlier and hide the peak. None where /proc/self/clear_refs is not writable."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_peak_child, args=(child, task, kwargs))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def _peak_child(conn: Any, task: str, kwargs: dict) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run = _MEMORY_TASKS[task](**kwargs)  # builds the inputs, returns the call to measure
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        start = _status_kb("VmRSS")
    except OSError:
        conn.send((None, None))
        return
    run()
    hwm = _status_kb("VmHWM")
    conn.send(((hwm - start) / 1024, hwm / 1024))


def slope(ns: list[int], ts: list[float]) -> float:
    """Least-squares slope of log(time) against log(N)."""
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


# ----------------------------------------------------------------------------- retrieval


def clustered(n_query: int, n_gallery: int, per_id: int, seed: int, noise: float) -> tuple[np.ndarray, ...]:
    """Unit 128-d embeddings around random identity centres: `per_id` gallery images per identity,
    queries are fresh images of random identities (so every query has per_id correct items)."""
    rng = np.random.default_rng(seed)
    n_ids = n_gallery // per_id
    centres = rng.standard_normal((n_ids, DIM), dtype=np.float32)
    glab = np.repeat(np.arange(n_ids), per_id)
    qlab = rng.integers(0, n_ids, n_query)
    g = centres[glab] + rng.standard_normal((len(glab), DIM), dtype=np.float32) * np.float32(noise)
    q = centres[qlab] + rng.standard_normal((n_query, DIM), dtype=np.float32) * np.float32(noise)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, g, qlab, glab


def _retrieval_task(n_query: int, n_gallery: int, per_id: int, seed: int, noise: float) -> Callable[[], Any]:
    from biomatch.metrics.retrieval import retrieval_ranks, retrieval_summary

    q, g, ql, gl = clustered(n_query, n_gallery, per_id, seed, noise)
    return lambda: retrieval_summary(retrieval_ranks(q, g, ql, gl))


def retrieval_row(n_query: int, n_gallery: int, per_id: int, reps: int, seed: int, noise: float = 1.5,
                  memory: bool = False) -> dict:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from biomatch.metrics.retrieval import retrieval_ranks, retrieval_summary

    q, g, ql, gl = clustered(n_query, n_gallery, per_id, seed, noise)
    qt, gt, qlt, glt = (torch.from_numpy(a) for a in (q, g, ql, gl))
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                              k="max_bin_count", device=torch.device("cpu"))
    before = load()
    best, all_t, out = interleaved({
        "ours": lambda: retrieval_summary(retrieval_ranks(q, g, ql, gl)),
        "pml": lambda: calc.get_accuracy(qt, qlt, gt, glt, ref_includes_query=False),
    }, reps)
    extra_mb = abs_mb = None
    if memory:
        extra_mb, abs_mb = peak_mb("retrieval", n_query=n_query, n_gallery=n_gallery, per_id=per_id, seed=seed, noise=noise)
    ours, pml = out["ours"], out["pml"]
    row = {
        "queries": n_query, "gallery": n_gallery, "per_identity": per_id, "noise": noise, "reps": reps,
        "ours_s": best["ours"], "pml_s": best["pml"], "ratio_vs_pml": best["ours"] / best["pml"],
        "ours_all_s": all_t["ours"], "pml_all_s": all_t["pml"],
        "ours_peak_mb_above_start": extra_mb, "ours_peak_rss_mb": abs_mb,
        "ours_metrics": ours, "pml_metrics": {k: float(v) for k, v in pml.items()},
        "precision_at_1_equal": ours["recall@1"] == float(pml["precision_at_1"]),
        "load_before": before, "load_after": load(),
    }
    print(f"retrieval {n_query}x{n_gallery} per_id={per_id} noise={noise}: ours {best['ours']:.2f} s, "
          f"PML {best['pml']:.2f} s, ratio {row['ratio_vs_pml']:.2f}, R@1 {ours['recall@1']:.3f} "
          f"(PML P@1 {float(pml['precision_at_1']):.3f}), peak +{extra_mb} MB, load {row['load_after']}", flush=True)
    return row


def run_retrieval(args: argparse.Namespace) -> dict:
    """Scaling N x N (the last N with --big-reps repetitions), then the headline rows."""
    sizes = [500, 1000, 2000, 4000] if args.quick else [1000, 5000, 10000, 20000, 50000]
    ten, big = sizes[2], sizes[-1]
    scaling = {}
    for n in sizes:
        big_n = n == big
        scaling[n] = retrieval_row(n, n, 10, args.big_reps if big_n else args.reps, args.seed,
                                   memory=n in (ten, big))
    q_big = big // 10  # the 5k queries x 50k gallery, affordable with the full repetitions
    rows = {
        "retrieval_10k": scaling[ten],
        "retrieval_10k_50per": retrieval_row(ten, ten, 50, args.reps, args.seed),
        "retrieval_10k_hard": retrieval_row(ten, ten, 10, args.reps, args.seed, noise=4.0),
        "retrieval_50k": retrieval_row(q_big, big, 10, args.reps, args.seed),
        "retrieval_50k_50per": retrieval_row(q_big, big, 50, args.reps, args.seed),
        "retrieval_50k_full": scaling[big],
    }
    ns = list(scaling)
    rows["retrieval_scaling"] = {
        "n": ns,
        "ours_s": [scaling[n]["ours_s"] for n in ns],
        "pml_s": [scaling[n]["pml_s"] for n in ns],
        "reps": [scaling[n]["reps"] for n in ns],
        "slope_ours": slope(ns, [scaling[n]["ours_s"] for n in ns]),
        "slope_pml": slope(ns, [scaling[n]["pml_s"] for n in ns]),
    }
    return rows


# ----------------------------------------------------------------------------- EER


def sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """The anchor: sklearn's ROC at every threshold, then the same linear interpolation as ours."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    d = (1.0 - tpr) - fpr
    k = int(np.argmax(d <= 0))
    if d[k] == 0 or k == 0:
        return float(fpr[k])
    w = d[k - 1] / (d[k - 1] - d[k])
    return float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))


def run_eer(args: argparse.Namespace) -> dict:
    from biomatch.metrics.verification import eer

    n = 200_000 if args.quick else 10_000_000
    rng = np.random.default_rng(args.seed)
    labels = (rng.random(n) < 0.1).astype(np.int8)
    continuous = (rng.standard_normal(n, dtype=np.float32) + np.float32(2.0) * labels).astype(np.float32)
    cases = {"no_ties": continuous, "ties": np.round(continuous, 2)}  # ~800 distinct values
    rows = {}
    for name, scores in cases.items():
        before = load()
        best, all_t, out = interleaved({"ours": lambda: eer(scores, labels),
                                        "sklearn": lambda: sklearn_eer(scores, labels)}, args.reps)
        rows[name] = {
            "n_scores": n, "genuine_fraction": float(labels.mean()), "distinct_scores": int(np.unique(scores).size),
            "ours_s": best["ours"], "sklearn_s": best["sklearn"], "ratio_vs_sklearn": best["ours"] / best["sklearn"],
            "ours_all_s": all_t["ours"], "sklearn_all_s": all_t["sklearn"],
            "eer": out["ours"], "eer_sklearn": out["sklearn"], "eer_identical": out["ours"] == out["sklearn"],
            "load_before": before, "load_after": load(),
        }
        print(f"eer {name}: ours {best['ours']:.2f} s, sklearn {best['sklearn']:.2f} s, "
              f"ratio {rows[name]['ratio_vs_sklearn']:.3f}, identical {rows[name]['eer_identical']}", flush=True)
    # headline: the less favourable of the two cases
    head = max(rows, key=lambda k: rows[k]["ratio_vs_sklearn"])
    return {"eer_1e7": {**rows[head], "headline_case": head, "cases": rows}}


# ----------------------------------------------------------------------------- RSM


def _rsm_loop(direct: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """RSM by the formula, one pair and one reference at a time (the naive reference)."""
    n, p = direct.shape
    m = a.shape[1]
    out = np.empty((n, p))
    for i in range(n):
        for j in range(p):
            total = 0.0
            for k in range(m):
                total += abs(float(a[i, k]) - float(b[j, k]))
            out[i, j] = total / m + alpha * float(direct[i, j])
    return out


def _rsm_inputs(n: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, n, generator=gen), torch.rand(n, m, generator=gen), torch.rand(n, m, generator=gen)


def _plain_cdist(direct: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """The anchor: one unchunked cdist(p=1) over all pairs, then the direct term."""
    return torch.cdist(a[None], b[None], p=1)[0].div_(a.shape[1]).add_(direct, alpha=alpha)


def _rsm_task(n: int, m: int, seed: int, alpha: float, which: str) -> Callable[[], Any]:
    from biomatch.matching.rsm import rsm_matrix

    direct, a, b = _rsm_inputs(n, m, seed)
    if which == "ours":  # in place, as RSM.from_features does
        return lambda: rsm_matrix(direct, a, b, alpha=alpha, out=direct)
    return lambda: _plain_cdist(direct, a, b, alpha)


def _palm_task(n: int, m: int, seed: int, alpha: float) -> Callable[[], Any]:
    """Palmprint-sized: n x n dissimilarities (10 images per palm), RSM in place, EER over all n^2 scores."""
    from biomatch.matching.distances import pair_scores
    from biomatch.matching.rsm import rsm_matrix
    from biomatch.metrics.verification import eer

    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) // 10
    direct = torch.rand(n, n, generator=gen) * 0.5 + 0.5 * (labels[:, None] != labels[None, :])
    a, b = torch.rand(n, m, generator=gen), torch.rand(n, m, generator=gen)

    def run() -> float:
        r = rsm_matrix(direct, a, b, alpha=alpha, out=direct)
        s, y = pair_scores(r, labels, labels)
        return eer(s.numpy(), y.numpy())

    return run


_MEMORY_TASKS: dict[str, Callable[..., Callable[[], Any]]] = {
    "retrieval": _retrieval_task, "rsm": _rsm_task, "palm": _palm_task,
}


def run_rsm(args: argparse.Namespace) -> dict:
    from biomatch.matching.rsm import rsm_matrix

    n = 2000 if args.quick else 10_000
    m, alpha = 30, 1.0
    direct, a, b = _rsm_inputs(n, m, args.seed)
    work = torch.empty_like(direct)
    before = load()
    best, all_t, out = interleaved({"ours": lambda: rsm_matrix(direct, a, b, alpha=alpha, out=work),
                                    "cdist": lambda: _plain_cdist(direct, a, b, alpha)}, args.reps)
    same = float((out["ours"] - out["cdist"]).abs().max())
    del out, work
    block = 40
    t0 = time.perf_counter()
    loop = _rsm_loop(direct[:block, :block].numpy(), a[:block].numpy(), b[:block].numpy(), alpha)
    loop_s = (time.perf_counter() - t0) * (n * n) / (block * block)
    loop_diff = float(np.abs(rsm_matrix(direct[:block, :block], a[:block], b[:block], alpha=alpha).double().numpy() - loop).max())
    del direct, a, b
    ours_mb, ours_abs = peak_mb("rsm", n=n, m=m, seed=args.seed, alpha=alpha, which="ours")
    cdist_mb, cdist_abs = peak_mb("rsm", n=n, m=m, seed=args.seed, alpha=alpha, which="cdist")
    row = {
        "n": n, "m": m, "alpha": alpha, "reps": args.reps,
        "ours_s": best["ours"], "cdist_s": best["cdist"], "ratio_vs_cdist": best["ours"] / best["cdist"],
        "ours_all_s": all_t["ours"], "cdist_all_s": all_t["cdist"],
        "loop_s_extrapolated": loop_s, "loop_block": block, "ratio_vs_loop": best["ours"] / loop_s,
        "max_abs_diff_vs_cdist": same, "max_abs_diff_vs_loop": loop_diff,
        "ours_peak_mb_above_start": ours_mb, "ours_peak_rss_mb": ours_abs,
        "cdist_peak_mb_above_start": cdist_mb, "cdist_peak_rss_mb": cdist_abs,
        "matrix_mb": n * n * 4 / 2**20, "load_before": before, "load_after": load(),
    }
    print(f"rsm {n}: ours {best['ours']:.2f} s (+{ours_mb} MB in place), cdist {best['cdist']:.2f} s "
          f"(+{cdist_mb} MB), loop ~{loop_s:.0f} s, diff {same:.1e}/{loop_diff:.1e}", flush=True)

    # palmprint-sized capacity check (issue #9): 6,000 x 6,000 RSM in place, then the EER over 36 M scores
    n6 = 1200 if args.quick else 6000
    before = load()
    t0 = time.perf_counter()
    value = _palm_task(n6, m, args.seed, alpha)()
    seconds = time.perf_counter() - t0
    mb6, abs6 = peak_mb("palm", n=n6, m=m, seed=args.seed, alpha=alpha)
    row6 = {"n": n6, "m": m, "scores": n6 * n6, "seconds_including_inputs": seconds, "eer": value,
            "peak_mb_above_start": mb6, "peak_rss_mb": abs6, "load_before": before, "load_after": load(),
            "call": "rsm_matrix(direct, rows_to_refs, cols_to_refs, out=direct); pair_scores; eer"}
    print(f"rsm+eer {n6}^2: {seconds:.1f} s, +{mb6} MB (peak RSS {abs6} MB)", flush=True)
    return {"rsm_10k": row, "rsm_eer_6k": row6}


# ----------------------------------------------------------------------------- 1:N search


def run_search(args: argparse.Namespace) -> dict:
    import faiss
    from gallery_search import PER_ID, face_like

    from biomatch.gallery.search import DEFAULT_EF_SEARCH, ExactSearcher, FaissSearcher, default_nprobe

    faiss.omp_set_num_threads(args.threads)
    sizes = [20_000] if args.quick else [100_000, 1_000_000]
    n_probe = 100 if args.quick else 300
    n_exact = 30 if args.quick else 60
    rows: dict[str, Any] = {}
    for n in sizes:
        x, probes, _ = face_like(n, n_probe, args.seed)
        probes = np.ascontiguousarray(probes, dtype=np.float32)
        xt = torch.from_numpy(x)
        ref = np.concatenate([(torch.from_numpy(probes[i:i + 50]) @ xt.T).argmax(1).numpy()
                              for i in range(0, n_probe, 50)])

        def per_query(search: Callable[[np.ndarray], np.ndarray], count: int) -> tuple[np.ndarray, dict]:
            search(probes[:1])
            ts, top = [], []
            for qv in probes[:count]:
                t0 = time.perf_counter()
                top.append(int(search(qv[None, :])[0, 0]))
                ts.append((time.perf_counter() - t0) * 1e3)
            top_a = np.array(top)
            return top_a, {"p50_ms": float(np.percentile(ts, 50)), "p95_ms": float(np.percentile(ts, 95)),
                           "queries": count, "template_parity": float(np.mean(top_a == ref[:count])),
                           "identity_parity": float(np.mean(top_a // PER_ID == ref[:count] // PER_ID))}

        before = load()
        exact_rows = {}
        torch_ex, np_ex = ExactSearcher(x, "torch"), ExactSearcher(x, "numpy")
        flat = FaissSearcher(x, "flat")
        searchers = {"exact torch (default)": torch_ex, "exact numpy": np_ex, "faiss IndexFlatIP (anchor)": flat}
        for rep in range(args.reps):  # interleaved: per repetition, every searcher in turn
            for name, s in searchers.items():
                _, r = per_query(lambda qv, s=s: s.search(qv, 1)[1], n_exact)
                if name not in exact_rows or r["p50_ms"] < exact_rows[name]["p50_ms"]:
                    exact_rows[name] = r
        del torch_ex, np_ex, flat, searchers
        anchor = exact_rows["faiss IndexFlatIP (anchor)"]["p50_ms"]
        for r in exact_rows.values():
            r["ratio_vs_flat"] = r["p50_ms"] / anchor
        t0 = time.perf_counter()
        ivf = FaissSearcher(x, "ivf", seed=args.seed)  # the defaults identify uses
        build = time.perf_counter() - t0
        nlist, default = ivf.index.nlist, ivf.index.nprobe
        sweep = []
        for nprobe in sorted({16, 64, 128, 256, 384, default}):
            if nprobe > nlist:
                continue
            ivf.index.nprobe = nprobe
            _, r = per_query(lambda qv: ivf.search(qv, 1)[1], n_probe)
            sweep.append({"nprobe": nprobe, "default": nprobe == default, **r, "ratio_vs_flat": r["p50_ms"] / anchor})
            print(f"search {n}: IVF nlist={nlist} nprobe={nprobe}: p50 {r['p50_ms']:.2f} ms, "
                  f"template parity {r['template_parity']:.3f}", flush=True)
        del ivf
        hnsw_sweep = []
        hnsw_build = None
        if n <= 100_000:
            t0 = time.perf_counter()
            hnsw = FaissSearcher(x, "hnsw")
            hnsw_build = time.perf_counter() - t0
            for ef in sorted({32, 64, 128, 256, DEFAULT_EF_SEARCH}):
                hnsw.index.hnsw.efSearch = ef
                _, r = per_query(lambda qv: hnsw.search(qv, 1)[1], n_probe)
                hnsw_sweep.append({"ef_search": ef, "default": ef == DEFAULT_EF_SEARCH, **r,
                                   "ratio_vs_flat": r["p50_ms"] / anchor})
                print(f"search {n}: HNSW efSearch={ef}: p50 {r['p50_ms']:.2f} ms, "
                      f"template parity {r['template_parity']:.3f}", flush=True)
            del hnsw
        reach = [s["nprobe"] for s in sweep if s["template_parity"] >= 0.99]
        rows[f"search_{n}"] = {
            "n": n, "exact": exact_rows, "ivf_nlist": nlist, "ivf_default_nprobe": default,
            "ivf_build_s": build, "ivf_sweep": sweep, "ivf_min_nprobe_parity_0.99": min(reach) if reach else None,
            "hnsw_build_s": hnsw_build, "hnsw_sweep": hnsw_sweep, "load_before": before, "load_after": load(),
        }
        assert default == default_nprobe(nlist)
        del x, xt
    big = rows[f"search_{sizes[-1]}"]
    d = next(s for s in big["ivf_sweep"] if s["default"])
    rows["ann_1e6"] = {"n": big["n"], "index": f"faiss IVF nlist={big['ivf_nlist']} nprobe={d['nprobe']} (default)",
                       "template_parity": d["template_parity"], "identity_parity": d["identity_parity"],
                       "p50_ms": d["p50_ms"], "p95_ms": d["p95_ms"], "queries": d["queries"],
                       "exact_torch_p50_ms": big["exact"]["exact torch (default)"]["p50_ms"],
                       "flat_p50_ms": big["exact"]["faiss IndexFlatIP (anchor)"]["p50_ms"]}
    return rows


# ----------------------------------------------------------------------------- report


def _f(x: float | None, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def markdown(rows: dict, args: argparse.Namespace, threads: dict) -> str:
    parts = [
        "## Engine speed",
        "",
        f"`python benchmarks/engine_speed.py` — every claim timed against its anchor in the same process, "
        f"interleaved, min of {args.reps} (the 50k × 50k retrieval rows: {args.big_reps}); threads pinned: "
        f"{threads}. Load averages (1/5/15 min) are recorded per row in benchmarks/results/engine_speed.json; "
        "the machine is a shared 2-core CPU, so seconds are upper bounds and only the ratios (same run, same "
        "load) are comparable. Ratio = our time / anchor time (< 1 = faster).",
        "",
    ]
    if "retrieval_10k" in rows:
        table = []
        for key in ("retrieval_10k", "retrieval_10k_50per", "retrieval_10k_hard", "retrieval_50k", "retrieval_50k_50per",
                    "retrieval_50k_full"):
            r = rows[key]
            table.append([key, f"{r['queries']:,} × {r['gallery']:,}", r["per_identity"], _f(r["ours_metrics"]["recall@1"], 3),
                          r["reps"], _f(r["ours_s"]), _f(r["pml_s"]), f"**{r['ratio_vs_pml']:.2f}**",
                          "yes" if r["precision_at_1_equal"] else "**no**",
                          "–" if r["ours_peak_mb_above_start"] is None
                          else f"+{r['ours_peak_mb_above_start']:.0f} ({r['ours_peak_rss_mb']:.0f})",
                          "/".join(f"{v:.1f}" for v in r["load_after"])])
        parts += [
            "Retrieval metrics (`retrieval_50k*` = 5k queries × 50k gallery as in issue #13; `retrieval_50k_full` = "
            "50k × 50k, the memory check, with the repetitions shown). Ours: `retrieval_ranks` + `retrieval_summary` = R@1/5/10, mean and median first rank "
            "(pessimistic ties) and mAP over the *whole* gallery (every correct item ranked). Anchor: "
            "pytorch-metric-learning `AccuracyCalculator(k=\"max_bin_count\")` = precision@1, MAP@R and R-precision, "
            "which look only at the top R = images per identity (faiss k-NN). Ours computes more (full AP, ranks "
            "beyond R) in the time. 128-d unit embeddings, Gaussian identity clusters (noise 1.5; `hard` = noise 4, "
            "R@1 ≈ 0.01, where most of each row must be sorted).",
            "",
            markdown_table(["row", "queries × gallery", "per id", "R@1 (= PML P@1)", "reps", "ours s", "PML s", "ratio",
                            "P@1 equal", "ours peak MB (RSS)", "load after"], table),
            "",
        ]
        sc = rows["retrieval_scaling"]
        table = [[f"{n:,}", k, _f(o), _f(p), _f(o / p)] for n, k, o, p in zip(sc["n"], sc["reps"], sc["ours_s"], sc["pml_s"])]
        table.append(["log-log slope", "", _f(sc["slope_ours"]), _f(sc["slope_pml"]), ""])
        parts += ["Scaling, N queries × N gallery, 10 per identity (slope 2 = cost proportional to the N² scores):", "",
                  markdown_table(["N", "reps", "ours s", "PML s", "ratio"], table), ""]
    if "eer_1e7" in rows:
        e = rows["eer_1e7"]
        table = [[k, f"{c['n_scores']:,}", f"{c['distinct_scores']:,}", _f(c["ours_s"]), _f(c["sklearn_s"]),
                  f"{c['ratio_vs_sklearn']:.3f} ({c['sklearn_s'] / c['ours_s']:.1f}× faster)",
                  "yes" if c["eer_identical"] else "**no**"] for k, c in e["cases"].items()]
        parts += [
            f"EER (`verification.eer`: two sorts + binary search) vs sklearn `roc_curve(drop_intermediate=False)` + "
            f"the same linear interpolation, float32 scores, 10 % genuine. Headline row `eer_1e7` = the "
            f"`{e['headline_case']}` case (the less favourable one). This replaces the earlier \"14× faster\" claim.",
            "",
            markdown_table(["case", "scores", "distinct", "ours s", "sklearn s", "ratio", "EER identical"], table),
            "",
        ]
    if "rsm_10k" in rows:
        r, r6 = rows["rsm_10k"], rows["rsm_eer_6k"]
        parts += [
            f"RSM from a score matrix ({r['n']:,} × {r['n']:,}, M = {r['m']}, α = {r['alpha']}): ours = "
            "`rsm_matrix(..., out=direct)` (chunked `cdist(p=1)`, in place); anchors = one unchunked "
            f"`torch.cdist(p=1)` and the per-pair Python loop (timed on {r['loop_block']} × {r['loop_block']}, "
            "extrapolated).",
            "",
            markdown_table(["work", "ours s", "anchor s", "ratio", "ours peak MB", "anchor peak MB", "max abs diff"], [
                ["RSM vs cdist", _f(r["ours_s"]), _f(r["cdist_s"]), _f(r["ratio_vs_cdist"]),
                 _f(r["ours_peak_mb_above_start"], 0), _f(r["cdist_peak_mb_above_start"], 0), f"{r['max_abs_diff_vs_cdist']:.1e}"],
                ["RSM vs naive loop", _f(r["ours_s"]), f"≈ {r['loop_s_extrapolated']:.0f}", f"{r['ratio_vs_loop']:.1e}",
                 "", "", f"{r['max_abs_diff_vs_loop']:.1e} (on the block)"],
                [f"RSM + EER over {r6['scores'] / 1e6:.0f} M scores ({r6['n']:,}²)", _f(r6["seconds_including_inputs"], 1), "–", "–",
                 f"{_f(r6['peak_mb_above_start'], 0)} (RSS {_f(r6['peak_rss_mb'], 0)})", "", "capacity check, one run"],
            ]),
            "",
        ]
    if "ann_1e6" in rows:
        table = []
        for key in sorted(k for k in rows if k.startswith("search_")):
            s = rows[key]
            for name, r in s["exact"].items():
                table.append([f"{s['n']:,}", name, _f(r["p50_ms"]), _f(r["p95_ms"]), _f(r["ratio_vs_flat"]), "1.000", "1.000"])
            for r in s["ivf_sweep"]:
                table.append([f"{s['n']:,}", f"IVF nlist={s['ivf_nlist']} nprobe={r['nprobe']}" + (" **(default)**" if r["default"] else ""),
                              _f(r["p50_ms"]), _f(r["p95_ms"]), _f(r["ratio_vs_flat"], 3), _f(r["template_parity"], 3), _f(r["identity_parity"], 3)])
            for r in s["hnsw_sweep"]:
                table.append([f"{s['n']:,}", f"HNSW M=32 efSearch={r['ef_search']}" + (" **(default)**" if r["default"] else ""),
                              _f(r["p50_ms"]), _f(r["p95_ms"]), _f(r["ratio_vs_flat"], 3), _f(r["template_parity"], 3), _f(r["identity_parity"], 3)])
        builds = "; ".join(f"{rows[k]['n']:,}: IVF {rows[k]['ivf_build_s']:.0f} s" + (f", HNSW {rows[k]['hnsw_build_s']:.0f} s" if rows[k]["hnsw_build_s"] else "")
                           for k in sorted(k for k in rows if k.startswith("search_")))
        parts += [
            "1:N search, face-like templates (benchmarks/gallery_search.py's generator), one query at a time; "
            "exact rows: p50 over the first probes, min over interleaved repetitions; parity = the index's top-1 is "
            "the same *template* (identity) as exact search's. Ratio vs faiss IndexFlatIP. The IVF default "
            "(`nprobe = default_nprobe(nlist)`) was chosen on seed 1 and is reported here on seed "
            f"{args.seed}. HNSW is built only at 10^5 (its 10^6 build does not fit this run). Build: {builds}.",
            "",
            markdown_table(["templates", "method", "p50 ms", "p95 ms", "ratio vs flat", "parity (template)", "parity (identity)"], table),
        ]
    return "\n".join(parts)


def main() -> None:
    args = ARGS if ARGS is not None else _parse()
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:  # pragma: no cover
        pass
    threads = {"torch": torch.get_num_threads(), "faiss": args.threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    parts = args.only or ["retrieval", "eer", "rsm", "search"]
    start_load, t0 = load(), time.perf_counter()
    rows: dict[str, Any] = {}
    for part in parts:
        rows.update({"retrieval": run_retrieval, "eer": run_eer, "rsm": run_rsm, "search": run_search}[part](args))
        if not args.quick:  # after every part, so a late failure keeps what was measured
            _write(rows, args, threads, start_load, time.perf_counter() - t0, parts)
    print(markdown(rows, args, threads))
    if args.quick:
        print(f"\n--quick: nothing written ({time.perf_counter() - t0:.0f} s)")


def _write(rows: dict, args: argparse.Namespace, threads: dict, start_load: list[float], seconds: float,
           parts: list[str]) -> None:
    write_result(
        "engine_speed",
        benchmark="engine_speed",
        method="biomatch metrics/matching/search engines vs their anchors (PML, sklearn, torch.cdist, faiss)",
        dataset="synthetic: Gaussian identity clusters (128-d unit), N(0,1)+shift scores, uniform RSM inputs, face-like templates",
        protocol="same process, interleaved, min of reps; threads pinned; load recorded per row",
        seeds=[args.seed],
        metrics=rows,
        reference={"source": "DESIGN.md speed targets; issue #13",
                   "metrics": {"retrieval_ratio_vs_pml_max": 1.0, "eer_ratio_vs_sklearn_max": 0.33,
                               "ann_template_parity_min": 0.99}},
        timing={"total_s": seconds},
        extra={"threads": threads, "load": {"start": start_load, "end": load()}, "parts": parts,
               "argv": sys.argv[1:]},
    )
    update_benchmarks_section("engine_speed", markdown(rows, args, threads))


if __name__ == "__main__":
    main()
