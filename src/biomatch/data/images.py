"""Image loading with errors that name the file, so one bad image never hides in a stack trace."""

from __future__ import annotations

import io
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
