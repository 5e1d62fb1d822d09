"""Score files in the CCNet-style text format: one pair per line, ``score label``.

Labels: 1 = genuine; 0 or -1 = impostor (CCNet writes -1). Separators: whitespace or a
comma; blank lines and ``#`` comments are skipped. CCNet's own scores are distances
(lower = same palm): read them with ``distances=True`` to get similarities.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "s.txt"
>>> write_score_file(p, [0.9, 0.1], [1, 0])
>>> read_score_file(p)[0].tolist(), read_score_file(p)[1].tolist()
([0.9, 0.1], [1, 0])
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from biomatch.errors import InputError, NotFoundError
from biomatch.metrics.verification import validate_pairs

_LABELS = {"1": 1, "1.0": 1, "+1": 1, "0": 0, "0.0": 0, "-1": 0, "-1.0": 0}


def read_score_file(path: str | Path, *, distances: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(similarity scores float64, labels int8) from a score file; ``distances`` negates the scores.

    Raises NotFoundError for a missing file and InputError naming the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"score file not found: {path}")
    scores: list[float] = []
    labels: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.split("#", 1)[0].replace(",", " ").strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise InputError(f"{path}:{lineno}: expected 'score label', got {raw.strip()!r}")
            try:
                score = float(parts[0])
            except ValueError:
                raise InputError(f"{path}:{lineno}: score {parts[0]!r} is not a number") from None
            if not math.isfinite(score):
                raise InputError(f"{path}:{lineno}: score {parts[0]!r} is not finite")
            if parts[1] not in _LABELS:
                raise InputError(f"{path}:{lineno}: label {parts[1]!r} must be 1 (genuine) or 0/-1 (impostor)")
            scores.append(score)
            labels.append(_LABELS[parts[1]])
    if not scores:
        raise InputError(f"{path}: no scored pairs")
    s = np.asarray(scores, dtype=np.float64)
    return (-s if distances else s), np.asarray(labels, dtype=np.int8)


def write_score_file(path: str | Path, scores: ArrayLike, labels: ArrayLike) -> None:
    """Write ``scores`` (similarities) and ``labels`` (1 genuine / 0 impostor), one pair per line."""
    s, gen = validate_pairs(scores, labels, need_both=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(f"{v!r} {int(g)}\n" for v, g in zip(s.tolist(), gen.tolist()))
