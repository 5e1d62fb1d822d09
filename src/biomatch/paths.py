"""Where data lives: ../shared/data beside the repo, the vendored sample, or $BIOMATCH_DATA."""

from __future__ import annotations

import os
from pathlib import Path

from biomatch.errors import NotFoundError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
VENDORED_DATA = REPO_ROOT / "data"


def shared_data_root() -> Path | None:
    """The shared datasets folder, if one is reachable (env var first, then ../shared/data)."""
    env = os.environ.get("BIOMATCH_DATA")
    if env:
        return Path(env)
    candidate = REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def dataset_dir(name: str) -> Path:
    """Folder of a named dataset: shared copy if present, else the vendored sample in ./data."""
    shared = shared_data_root()
    for root in ([shared] if shared else []) + [VENDORED_DATA]:
        path = root / name
        if path.is_dir():
            return path
    raise NotFoundError(
        f"dataset {name!r} not found under $BIOMATCH_DATA, ../shared/data or {VENDORED_DATA}"
    )


def cache_dir() -> Path:
    """Where cached features and downloaded artifacts go ($BIOMATCH_CACHE or ./.cache)."""
    path = Path(os.environ.get("BIOMATCH_CACHE", REPO_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
