"""Enrol / verify (1:1, unlock) / identify (1:N) on a template store with any Embedder.

Adding a user never retrains anything: enrolment embeds a few images and stores the vectors,
tagged with the embedder's model hash. Templates made by another model are never compared
with this one's embeddings (they live in another space); the error says so.

Scores are cosine similarities (higher = same) and the threshold is a minimum similarity,
as in biomatch.calibration: accept iff score ≥ threshold. Results also carry the distance
1 − score, since people read "distance under the limit" more easily.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from biomatch.data.images import load_image
from biomatch.errors import BiomatchError, InputError, NotFoundError, StateError
from biomatch.gallery.search import SEARCH_KINDS, Searcher, build_searcher
from biomatch.gallery.store import TemplateStore, UserInfo, validate_user_id
from biomatch.models.embedder import Embedder

ImageLike = Image.Image | bytes | str | Path
Policy = Literal["max", "mean"]
MAX_ENROL_IMAGES = 50


@dataclass(frozen=True)
class Match:
    """One candidate user with their aggregated similarity and the matching distance."""

    user: str
    score: float
    distance: float


@dataclass(frozen=True)
class EnrollResult:
    user: str
    added: int
    total: int


@dataclass(frozen=True)
class VerifyResult:
    """1:1 decision: `accepted` iff score ≥ threshold (similarity), i.e. distance ≤ 1 − threshold."""

    user: str
    accepted: bool
    score: float
    distance: float
    threshold: float


@dataclass(frozen=True)
class IdentifyResult:
    """1:N decision: `user` is the best candidate if within threshold, else None ("unknown")."""

    user: str | None
    threshold: float
    candidates: list[Match] = field(default_factory=list)


@dataclass
class _Gallery:
    revision: int
    labels: list[str]  # row label of each searched vector
    n_users: int
    searcher: Searcher


def _name(image: ImageLike, i: int) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"image {i + 1}"


class GalleryService:
    """The unlock / identification system: one embedder, one store, one threshold, one policy.

    policy "mean" (default): a user's score is the mean similarity over their templates (= dot
    product with the mean template); "max": the best one. On LFW62 (benchmarks/enrolment_policy.py)
    mean identified slightly better (0.990 vs 0.988 top-1, 5 seeds) and, decisively, kept the
    false-accept rate at the calibrated threshold near its target (0.001) where max rose to
    0.007-0.016 as templates were added: every extra template is another chance for an impostor.
    """

    def __init__(
        self,
        embedder: Embedder,
        store: TemplateStore,
        threshold: float,
        policy: Policy = "mean",
        search: str = "exact",
        search_options: dict[str, object] | None = None,
        rescorer: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if policy not in ("max", "mean"):
            raise InputError(f"unknown enrolment policy {policy!r}; choose 'max' or 'mean'")
        if not np.isfinite(threshold):
            raise InputError(f"threshold must be a finite cosine similarity, got {threshold}")
        self.embedder = embedder
        self.store = store
        self.threshold = float(threshold)
        self.policy: Policy = policy
        self.search_kind = search
        self.search_options = dict(search_options or {})
        self._embed_takes_names = "names" in inspect.signature(embedder.embed).parameters
        self.rescorer = rescorer  # (query (dim,), shortlist (n, dim)) -> similarity scores (n,)
        self._lock = threading.Lock()
        self._gallery: _Gallery | None = None
        if search not in SEARCH_KINDS:
            raise InputError(f"unknown search kind {search!r}; choose one of {', '.join(SEARCH_KINDS)}")

    @property
    def model_hash(self) -> str:
        return self.embedder.model_hash

    # -- embedding --------------------------------------------------------------------
    def embed(self, image: ImageLike, name: str = "image") -> np.ndarray:
        """One image → one unit (dim,) vector; errors name the image."""
        try:
            img = image if isinstance(image, Image.Image) else load_image(image)
            if self._embed_takes_names:  # e.g. FaceEmbedder names the image in "no face found"
                out = np.asarray(self.embedder.embed([img], names=[name]), dtype=np.float32)  # type: ignore[call-arg]
            else:
                out = np.asarray(self.embedder.embed([img]), dtype=np.float32)
        except BiomatchError as exc:
            if name in str(exc):  # load_image already named the file
                raise
            raise type(exc)(f"{name}: {exc}") from exc
        if out.shape != (1, self.embedder.dim) or not np.all(np.isfinite(out)):
            raise StateError(
                f"embedder {self.embedder.name!r} returned shape {out.shape} (expected (1, {self.embedder.dim})) "
                "or non-finite values"
            )
        norm = float(np.linalg.norm(out[0]))
        if norm < 1e-6:
            raise InputError(f"{name}: the embedder returned a zero vector")
        return out[0] / norm

    # -- writes -----------------------------------------------------------------------
    def enroll(self, user: str, images: Sequence[ImageLike]) -> EnrollResult:
        """Embed every image first, then store them all in one transaction (all or nothing)."""
        validate_user_id(user)
        if not images:
            raise InputError("enrolment needs at least one image")
        if len(images) > MAX_ENROL_IMAGES:
            raise InputError(f"at most {MAX_ENROL_IMAGES} images per enrolment, got {len(images)}")
        vectors = np.stack([self.embed(img, _name(img, i)) for i, img in enumerate(images)])
        self.store.add(user, vectors, self.model_hash)
        total = len(self.store.templates(self.model_hash, user=user))
        return EnrollResult(user, len(vectors), total)

    def delete(self, user: str) -> int:
        validate_user_id(user)
        return self.store.delete_user(user)

    def users(self) -> list[UserInfo]:
        return self.store.users()

    # -- reads ------------------------------------------------------------------------
    def _score_user(self, query: np.ndarray, templates: np.ndarray) -> float:
        sims = templates @ query
        if self.rescorer is not None:
            sims = np.asarray(self.rescorer(query, templates), dtype=np.float32)
        return float(sims.max() if self.policy == "max" else sims.mean())

    def verify(self, user: str, image: ImageLike) -> VerifyResult:
        """1:1: compare the image with `user`'s templates made by this model."""
        validate_user_id(user)
        if not self.store.has_user(user):
            raise NotFoundError(f"unknown user {user!r}")
        templates = self.store.templates(self.model_hash, user=user)
        if len(templates) == 0:
            raise StateError(self._mismatch_message(f"user {user!r} has no templates"))
        query = self.embed(image, _name(image, 0))
        score = self._score_user(query, templates.vectors)
        distance = 1.0 - score
        return VerifyResult(user, score >= self.threshold, score, distance, self.threshold)

    def identify(self, image: ImageLike, k: int = 5) -> IdentifyResult:
        """1:N: top-k users by policy score; the best one if within threshold, else unknown."""
        if not 1 <= k <= 100:
            raise InputError(f"k must be between 1 and 100, got {k}")
        gallery = self._current_gallery()
        query = self.embed(image, _name(image, 0))
        matches = self._top_users(gallery, query, k)
        best = matches[0] if matches and matches[0].score >= self.threshold else None
        return IdentifyResult(best.user if best else None, self.threshold, matches)

    def _top_users(self, gallery: _Gallery, query: np.ndarray, k: int) -> list[Match]:
        n = gallery.searcher.size
        want = min(k, gallery.n_users) if self.policy == "max" else min(k, n)
        fetch = min(n, k if self.policy == "mean" else 4 * k)
        while True:  # bounded: `fetch` doubles up to n
            scores, idx = gallery.searcher.search(query[None, :], fetch)
            seen: dict[str, float] = {}
            for s, i in zip(scores[0], idx[0]):
                if i >= 0 and gallery.labels[i] not in seen:
                    seen[gallery.labels[i]] = float(s)
            # Templates come best-first, so each user's first hit is their max; once `want`
            # distinct users are seen, no unseen user can beat them.
            if len(seen) >= want or fetch >= n:
                break
            fetch = min(n, fetch * 2)
        ranked = list(seen.items())[:k]
        if self.rescorer is not None:
            ranked = self._rescore(query, [u for u, _ in ranked])
        return [Match(u, s, 1.0 - s) for u, s in ranked]

    def _rescore(self, query: np.ndarray, users: list[str]) -> list[tuple[str, float]]:
        """Optional re-scoring of the shortlist (e.g. RSM) with each user's templates."""
        rescored = [(u, self._score_user(query, self.store.templates(self.model_hash, u).vectors)) for u in users]
        return sorted(rescored, key=lambda t: -t[1])

    def _mismatch_message(self, what: str) -> str:
        others = {h: n for h, n in self.store.model_hashes().items() if h != self.model_hash}
        if not others:
            return f"{what}: enrol first"
        listing = ", ".join(f"{n} from model {h[:12]}" for h, n in sorted(others.items()))
        return (
            f"{what} made by the current model {self.embedder.name} ({self.model_hash[:12]}); "
            f"the store holds templates of other models ({listing}), which cannot be compared: re-enrol"
        )

    def _current_gallery(self) -> _Gallery:
        """The searchable gallery for this model, rebuilt only when the store's revision moves."""
        with self._lock:
            rev = self.store.revision()
            if self._gallery is not None and self._gallery.revision == rev:
                return self._gallery
            t = self.store.templates(self.model_hash)
            if len(t) == 0:
                raise StateError(self._mismatch_message("the gallery is empty"))
            if t.vectors.shape[1] != self.embedder.dim:
                raise StateError(
                    f"stored templates have dimension {t.vectors.shape[1]} but the embedder gives {self.embedder.dim}"
                )
            if self.policy == "mean":
                labels, vectors = _user_means(t.users, t.vectors)
            else:
                labels, vectors = t.users, t.vectors
            options = self.search_options if self.search_kind not in ("exact", "numpy") else {}
            searcher = build_searcher(vectors, self.search_kind, **options)
            self._gallery = _Gallery(rev, labels, len(set(labels)), searcher)
            return self._gallery


def _user_means(users: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Mean template per user (not re-normalized: its dot product is the mean similarity)."""
    names, inverse = np.unique(np.asarray(users, dtype=object), return_inverse=True)
    sums = np.zeros((len(names), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, vectors)
    counts = np.bincount(inverse, minlength=len(names))[:, None]
    return [str(n) for n in names], (sums / counts).astype(np.float32)
