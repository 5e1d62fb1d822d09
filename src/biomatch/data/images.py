"""Image loading with errors that name the file, so one bad image never hides in a stack trace."""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from biomatch.errors import InputError, NotFoundError


def load_image(source: str | Path | bytes, mode: str = "RGB") -> Image.Image:
    """Decode an image file (path or raw bytes) fully, converted to `mode`.

    Raises NotFoundError for a missing path and InputError for anything that is not a
    readable image (truncated, corrupt, unknown format).
    """
    name = "<upload>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise NotFoundError(f"image not found: {name}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {name}: {exc}") from exc


def file_fingerprint(path: str | Path) -> str:
    """``name:size:content-hash`` of a file: the key of every on-disk cache derived from it.

    The content, not the modification time, so a copy of the same data (a fresh clone, a re-synced
    ``../shared``) still hits the cache, while an edited image misses it. Hashes are memoized per
    (path, size, mtime) within a process, so repeated keys cost one ``stat``."""
    path = Path(path)
    st = path.stat()
    return _fingerprint(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=200_000)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.blake2b(Path(path).read_bytes(), digest_size=8).hexdigest()
    return f"{Path(path).name}:{size}:{digest}"
