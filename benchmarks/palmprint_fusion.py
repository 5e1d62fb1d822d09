"""Issue #9 extra row: score-level fusion of CompCode and the learned CompNet-lite on TongjiFull.

    python benchmarks/palmprint_fusion.py      # needs the cached matrices of benchmarks/palmprint_full.py --part scores

Each matcher's dissimilarities are standardized with the median / MAD of its *gallery-to-reference*
dissimilarities in the same protocol (enrolment data only, no test labels); the fused
dissimilarity is w * CompCode + (1 - w) * CompNet with w chosen on the validation palms
(250-274, open-set network), never on test. Writes benchmarks/results/palmprint_fusion_<protocol>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from biomatch.metrics.verification import eer
from biomatch.palmprint.data import DISPLAY_NAMES
from biomatch.palmprint.full import ScoreMatrices, pair_arrays, palm_bootstrap_eer, summary
from biomatch.palmprint.splits import PROTOCOLS
from biomatch.results import RESULTS_DIR, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
from palmprint_full import _scores_path  # noqa: E402

W_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def standardized(sm: ScoreMatrices) -> torch.Tensor:
    """(direct - median) / MAD of the gallery-to-reference dissimilarities (robust to genuine refs)."""
    ref = sm.gallery_refs.flatten()
    med = ref.median()
    mad = (ref - med).abs().median().clamp(min=1e-6)
    return (sm.direct - med) / mad


def fused(a: ScoreMatrices, b: ScoreMatrices, w: float) -> torch.Tensor:
    return standardized(a).mul_(w).add_(standardized(b), alpha=1.0 - w)


def main() -> None:
    torch.set_num_threads(1)
    va, vb = (ScoreMatrices.load(_scores_path(k, "validation")) for k in ("compcode", "compnet"))
    _, g = pair_arrays(va.direct, va.probe_palms, va.gallery_palms)
    sweep = {float(w): eer(pair_arrays(fused(va, vb, w), va.probe_palms, va.gallery_palms)[0], g) for w in W_GRID}
    w_best = min(sweep, key=lambda w: (sweep[w], abs(w - 0.5)))
    print(f"validation EER by w: {sweep}; chosen w = {w_best}", flush=True)
    for protocol in PROTOCOLS:
        a, b = (ScoreMatrices.load(_scores_path(k, protocol)) for k in ("compcode", "compnet"))
        mat = fused(a, b, w_best)
        rep = summary(mat, a.probe_palms, a.gallery_palms)
        rep.update(palm_bootstrap_eer(mat, a.probe_palms, a.gallery_palms, n_boot=200, seed=0, point_eer=rep["eer"]))
        metrics = {"eer": rep["eer"], "eer_ci_low": rep["eer_ci_low"], "eer_ci_high": rep["eer_ci_high"],
                   "rank1": rep["rank1"], "d_prime": rep["d_prime"],
                   **{k: rep[k] for k in ("tar@far=1e-3", "tar@far=1e-4", "tar@far=1e-5", "n_genuine", "n_impostor")}}
        write_result(
            f"palmprint_fusion_{protocol}", benchmark="palmprint_fusion",
            method=f"CompCode + CompNet-lite score fusion (w = {w_best:g} on CompCode, chosen on validation palms)",
            dataset=DISPLAY_NAMES["tongji_full"], protocol=f"{protocol} set as in palmprint_full; no RSM",
            seeds=[0], metrics=metrics, extra={"validation_sweep_eer": sweep, "w": w_best},
        )
        print(f"{protocol} fusion: EER {rep['eer']:.6f} [{rep['eer_ci_low']:.6f}, {rep['eer_ci_high']:.6f}], rank-1 {rep['rank1']:.4f}", flush=True)
        (RESULTS_DIR / "raw").mkdir(exist_ok=True)
        (RESULTS_DIR / "raw" / f"palmprint_fusion_row_{protocol}.json").write_text(json.dumps({"w": w_best, **metrics}, default=float))


if __name__ == "__main__":
    main()
