"""Unlock thresholds: chosen for a target FAR, stored beside the model, bound to its SHA-256.

A threshold only means something for the exact weights (and preprocessing) that produced
the scores it was chosen on, so the artifact records the model file's hash and loading it
for any other model raises StateError naming both hashes. Scores are cosine similarities
(higher = same person); a probe is accepted when ``score >= threshold``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from biomatch.errors import InputError, NotFoundError, StateError
from biomatch.metrics.verification import threshold_at_far, validate_pairs

METRIC = "cosine similarity"
SUFFIX = ".threshold.json"


@dataclass(frozen=True)
class Threshold:
    """A calibrated accept threshold and where it came from."""

    model_sha256: str
    threshold: float
    target_far: float
    far: float  # measured on the calibration pairs
    tar: float
    n_genuine: int
    n_impostor: int
    dataset: str
    date: str
    metric: str = METRIC
    preprocess: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def accepts(self, score: float | np.ndarray) -> bool | np.ndarray:
        """True where a similarity clears the threshold."""
        out = np.asarray(score) >= self.threshold
        return bool(out) if out.ndim == 0 else out


def calibrate(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    target_far: float,
    model_sha256: str,
    dataset: str,
    preprocess: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Threshold:
    """Lowest threshold whose FAR on these pairs is <= ``target_far``, with measured FAR/TAR.

    ``scores`` are similarities, ``labels`` 1 = genuine. Needs at least 1/target_far
    impostor pairs (InputError otherwise): fewer cannot show that FAR.
    """
    s, genuine = validate_pairs(scores, labels)
    t = threshold_at_far(s, genuine.astype(np.int8), target_far)
    accepted = s >= t
    return Threshold(
        model_sha256=model_sha256,
        threshold=float(t),
        target_far=float(target_far),
        far=float(accepted[~genuine].mean()),
        tar=float(accepted[genuine].mean()),
        n_genuine=int(genuine.sum()),
        n_impostor=int((~genuine).sum()),
        dataset=dataset,
        date=_dt.date.today().isoformat(),
        preprocess=preprocess,
        extra=dict(extra or {}),
    )


def threshold_path(model_path: str | Path) -> Path:
    """``<model stem>.threshold.json`` in the model's folder."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + SUFFIX)


def save_threshold(threshold: Threshold, path: str | Path) -> Path:
    """Write the artifact atomically (tmp file + os.replace) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(threshold), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_threshold(
    path: str | Path,
    *,
    model_sha256: str,
    preprocess: dict[str, Any] | None = None,
) -> Threshold:
    """Read an artifact, refusing it unless it was calibrated for this model (and preprocessing).

    Raises NotFoundError (no file), InputError (not a threshold artifact) and StateError
    (calibrated for another model hash or another preprocessing).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no calibrated threshold at {path}; run `biomatch calibrate` for this model")
    try:
        raw = json.loads(path.read_text())
        th = Threshold(**raw)
        float(th.threshold)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise InputError(f"{path} is not a threshold artifact: {exc}") from exc
    if th.metric != METRIC:
        raise InputError(f"{path}: threshold is for {th.metric!r}, expected {METRIC!r}")
    if th.model_sha256 != model_sha256:
        raise StateError(
            f"threshold {path} was calibrated for model sha256 {th.model_sha256}, "
            f"but the model in use has sha256 {model_sha256}; recalibrate with `biomatch calibrate`"
        )
    if preprocess is not None and th.preprocess is not None and _canon(th.preprocess) != _canon(preprocess):
        raise StateError(
            f"threshold {path} was calibrated with preprocessing {th.preprocess}, "
            f"but the embedder uses {preprocess}; recalibrate with `biomatch calibrate`"
        )
    return th


def _canon(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True)
