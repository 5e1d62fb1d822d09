"""Unlock thresholds: chosen for a target FAR, stored beside the model, bound to its SHA-256.

A threshold only means something for the exact weights (and preprocessing) that produced
the scores it was chosen on, so the artifact records the model file's hash and loading it
for any other model raises StateError naming both hashes; it also records the whole
preprocessing pipeline (detection, alignment, normalization), which is required and must match.
Scores are cosine similarities in [-1, 1] (higher = same person); a probe is accepted when
``score >= threshold``, so an artifact must hold a threshold in (-1, 1]: -1 or below would
accept every probe (an impostor unlocks) and is refused, as is one without its preprocessing.
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


def threshold_path(model_path: str | Path, variant: str | None = None) -> Path:
    """``<model stem>[.<variant>].threshold.json`` in the model's folder (variant: e.g. "crop")."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + (f".{variant}" if variant else "") + SUFFIX)


def validate_threshold_value(value: float, what: str = "threshold") -> float:
    """A cosine-similarity threshold must be a finite number in (-1, 1]: -1 or less accepts every
    probe, above 1 rejects every probe. InputError otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a number (cosine similarity in (-1, 1]), got {value!r}") from exc
    if not np.isfinite(v) or not -1.0 < v <= 1.0:
        raise InputError(f"{what} {value!r} is outside (-1, 1]: a cosine-similarity threshold there would "
                         f"{'accept every probe' if v <= -1 else 'reject every probe'}")
    return v


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

    Raises NotFoundError (no file), InputError (not a threshold artifact, threshold outside
    (-1, 1], preprocessing not recorded) and StateError (calibrated for another model hash or
    another preprocessing). Pass ``preprocess`` whenever the caller knows it (face embedders do).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no calibrated threshold at {path}; run `biomatch calibrate` for this model")
    try:
        raw = json.loads(path.read_text())
        th = Threshold(**raw)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise InputError(f"{path} is not a threshold artifact: {exc}") from exc
    if isinstance(th.threshold, bool) or not isinstance(th.threshold, (int, float)):
        raise InputError(f"{path}: threshold must be a number, got {th.threshold!r}")
    validate_threshold_value(th.threshold, f"{path}: threshold")
    if not isinstance(th.model_sha256, str) or len(th.model_sha256) != 64:
        raise InputError(f"{path}: model_sha256 must be a 64-hex-digit SHA-256, got {th.model_sha256!r}")
    if th.metric != METRIC:
        raise InputError(f"{path}: threshold is for {th.metric!r}, expected {METRIC!r}")
    if th.model_sha256 != model_sha256:
        raise StateError(
            f"threshold {path} was calibrated for model sha256 {th.model_sha256}, "
            f"but the model in use has sha256 {model_sha256}; recalibrate with `biomatch calibrate`"
        )
    if not isinstance(th.preprocess, dict) or not th.preprocess:
        raise InputError(f"{path}: preprocess is missing; the artifact must record the preprocessing it was "
                         "calibrated with; recalibrate with `biomatch calibrate`")
    if preprocess is not None and _canon(th.preprocess) != _canon(preprocess):
        keys = sorted(k for k in set(th.preprocess) | set(preprocess) if th.preprocess.get(k) != preprocess.get(k))
        raise StateError(
            f"threshold {path} was calibrated with another preprocessing (differs in: {', '.join(keys)}; "
            f"artifact input {th.preprocess.get('input', 'unrecorded')!r}, embedder input "
            f"{preprocess.get('input', 'unrecorded')!r}); recalibrate with `biomatch calibrate`"
        )
    return th


def _canon(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True)
