"""Where data lives: $BIOMATCH_DATA, else ../shared/data beside the repo, else the bundled data/.

Resolution is per dataset: a dataset missing from the shared folder falls back to the bundled copy.
Some bundled folders are only *subsets* (a few images the tests read; they hold a SUBSET.txt line
saying what is there): using one prints a BundledSubsetWarning once, and `shared_dataset_dir`
refuses them, for checks and benchmarks that need the full set.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from biomatch.errors import NotFoundError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
VENDORED_DATA = REPO_ROOT / "data"
SUBSET_MARKER = "SUBSET.txt"


class BundledSubsetWarning(UserWarning):
    """A dataset resolved to the bundled subset (tests' sample), not the full set."""


_warned: set[str] = set()


def shared_data_root() -> Path | None:
    """The shared datasets folder, if one is reachable (env var first, then ../shared/data)."""
    env = os.environ.get("BIOMATCH_DATA")
    if env:
        return Path(env)
    candidate = REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def shared_dataset_dir(name: str) -> Path:
    """Folder of the full dataset ``name`` in the shared data (never the bundled copy)."""
    shared = shared_data_root()
    if shared is not None and (shared / name).is_dir():
        return shared / name
    raise NotFoundError(
        f"dataset {name!r} needs the full copy in $BIOMATCH_DATA or ../shared/data "
        f"({'not found there' if shared else 'neither is present'})"
    )


def bundled_subset(path: Path) -> str | None:
    """What a bundled subset folder holds (its SUBSET.txt line), or None for a full dataset."""
    marker = Path(path) / SUBSET_MARKER
    return marker.read_text().strip() if marker.is_file() else None


def dataset_dir(name: str) -> Path:
    """Folder of a named dataset: the shared copy if present, else the bundled one in ./data."""
    try:
        return shared_dataset_dir(name)
    except NotFoundError:
        pass
    path = VENDORED_DATA / name
    if not path.is_dir():
        raise NotFoundError(
            f"dataset {name!r} not found under $BIOMATCH_DATA, ../shared/data or {VENDORED_DATA}"
        )
    subset = bundled_subset(path)
    if subset and name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"using the bundled subset of {name} ({subset}); results on it are not comparable with "
            f"the full set: put that in ../shared/data/{name} or $BIOMATCH_DATA",
            BundledSubsetWarning,
            stacklevel=2,
        )
    return path


def cache_dir() -> Path:
    """Where cached features and downloaded artifacts go ($BIOMATCH_CACHE or ./.cache)."""
    path = Path(os.environ.get("BIOMATCH_CACHE", REPO_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
