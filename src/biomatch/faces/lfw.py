"""LFW "View 2" pairs: parse pairs.txt into labelled image pairs with their fold.

pairs.txt starts with "<folds> <n>", then per fold n matched lines ``name i j`` followed by
n mismatched lines ``name1 i name2 j``. Image k of a person is
``images/<name>/<name>_<kkkk>.jpg``. Label 1 = same person (genuine), 0 = impostor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomatch.errors import InputError, NotFoundError


@dataclass(frozen=True)
class LfwPairs:
    """Pairs as relative image paths plus label and fold arrays (one entry per pair)."""

    root: Path
    left: list[str]
    right: list[str]
    labels: np.ndarray  # int64, 1 = same person
    folds: np.ndarray  # int64, 0..n_folds-1

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> list[str]:
        """Unique relative image paths, sorted (embed each once)."""
        return sorted(set(self.left) | set(self.right))

    def path(self, rel: str) -> Path:
        return self.root / rel

    def index_pairs(self, images: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Row indices into ``images`` of each pair's two sides."""
        pos = {p: i for i, p in enumerate(images)}
        return (np.array([pos[p] for p in self.left]), np.array([pos[p] for p in self.right]))


def image_rel(name: str, number: int) -> str:
    return f"images/{name}/{name}_{number:04d}.jpg"


def parse_pairs(pairs_file: str | Path, images_root: str | Path | None = None) -> LfwPairs:
    """Read pairs.txt; ``images_root`` defaults to its folder (holding ``images/``)."""
    pairs_file = Path(pairs_file)
    if not pairs_file.is_file():
        raise NotFoundError(f"pairs file not found: {pairs_file}")
    lines = [ln.split() for ln in pairs_file.read_text().splitlines() if ln.strip()]
    try:
        n_folds, n_per = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError) as exc:
        raise InputError(f"{pairs_file}: first line must be '<folds> <pairs per class>'") from exc
    body = lines[1:]
    if len(body) != n_folds * 2 * n_per:
        raise InputError(f"{pairs_file}: expected {n_folds * 2 * n_per} pair lines, found {len(body)}")
    left, right, labels, folds = [], [], [], []
    for k, parts in enumerate(body, start=2):
        try:
            if len(parts) == 3:
                a, b, same = image_rel(parts[0], int(parts[1])), image_rel(parts[0], int(parts[2])), 1
            elif len(parts) == 4:
                a, b, same = image_rel(parts[0], int(parts[1])), image_rel(parts[2], int(parts[3])), 0
            else:
                raise ValueError(f"{len(parts)} fields")
        except ValueError as exc:
            raise InputError(f"{pairs_file}:{k}: bad pair line {' '.join(parts)!r} ({exc})") from exc
        index = k - 2
        expected_same = (index % (2 * n_per)) < n_per
        if same != expected_same:
            raise InputError(f"{pairs_file}:{k}: a {'matched' if expected_same else 'mismatched'} pair was expected")
        left.append(a)
        right.append(b)
        labels.append(same)
        folds.append(index // (2 * n_per))
    root = Path(images_root) if images_root is not None else pairs_file.parent
    return LfwPairs(root, left, right, np.array(labels, np.int64), np.array(folds, np.int64))


def default_pairs() -> LfwPairs:
    """The shared lfw_pairs dataset (../shared/data/lfw_pairs)."""
    from biomatch.paths import dataset_dir

    return parse_pairs(dataset_dir("lfw_pairs") / "pairs.txt")


def embed_images(embedder, pairs: LfwPairs, images: list[str] | None = None, chunk: int = 256) -> np.ndarray:
    """Embeddings of ``images`` (default: every image in the pairs), in pairs.images order."""
    from biomatch.data.images import load_image

    images = pairs.images if images is None else images
    out = [
        embedder.embed([load_image(pairs.path(r)) for r in images[i : i + chunk]])
        for i in range(0, len(images), chunk)
    ]
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)


def score_pairs(embedder, pairs: LfwPairs, embeddings: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of every pair (embeddings are L2-normalized), one embedding per image."""
    images = pairs.images
    emb = embed_images(embedder, pairs, images) if embeddings is None else embeddings
    a, b = pairs.index_pairs(images)
    return (emb[a] * emb[b]).sum(1).astype(np.float64)


def _cache_path(embedder, pairs: LfwPairs, images: list[str]):
    import hashlib

    from biomatch.paths import cache_dir

    key = getattr(embedder, "embedder_id", embedder.model_hash)
    h = hashlib.sha256(("\n".join(images) + str(pairs.root.resolve())).encode()).hexdigest()[:12]
    folder = cache_dir() / "features"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"lfw-{key[:16]}-{h}.npz"


def save_cached_embeddings(embedder, pairs: LfwPairs, images: list[str], emb: np.ndarray, detectors: list[str],
                           timing: dict | None = None) -> None:
    """Store embeddings of ``images`` made by this exact embedder (its ``embedder_id``: model hash +
    preprocessing), so `biomatch calibrate` can reuse what the benchmark computed."""
    import json

    path = _cache_path(embedder, pairs, images)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, emb=emb.astype(np.float32), detectors=np.array(detectors), timing=json.dumps(timing or {}))
    tmp.replace(path)


def load_cached_embeddings(embedder, pairs: LfwPairs, images: list[str]) -> tuple[np.ndarray, list[str], dict] | None:
    """(embeddings, detectors, timing) stored by ``save_cached_embeddings`` for this embedder_id, or None."""
    import json

    path = _cache_path(embedder, pairs, images)
    if not path.is_file():
        return None
    z = np.load(path)
    if len(z["emb"]) != len(images):
        return None
    return z["emb"], z["detectors"].tolist(), json.loads(str(z["timing"])) if "timing" in z else {}


def cached_embeddings(embedder, pairs: LfwPairs, images: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Embeddings (and who found each face) of ``images``: from the cache when this embedder_id
    made them before, else computed (no-face images follow the embedder's ``on_missing``)."""
    from biomatch.data.images import load_image

    images = pairs.images if images is None else images
    hit = load_cached_embeddings(embedder, pairs, images)
    if hit is not None:
        return hit[0], hit[1]
    out, found = [], []
    for i in range(0, len(images), 64):
        out.append(embedder.embed([load_image(pairs.path(r)) for r in images[i : i + 64]], images[i : i + 64]))
        found += list(getattr(embedder, "last_detectors", []) or ["?"] * len(out[-1]))
    emb = np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)
    save_cached_embeddings(embedder, pairs, images, emb, found)
    return emb, found
