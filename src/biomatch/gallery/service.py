"""Enrol / verify (1:1, unlock) / identify (1:N) on a template store with any Embedder.

Adding a user never retrains anything: enrolment embeds a few images and stores the vectors,
tagged with the embedder's id (``template_key``: its ``embedder_id`` when it has one, i.e. a
hash of model + preprocessing, else its ``model_hash``). Templates made by another model, or
by the same model on differently prepared inputs (faces detected in photos vs pre-cropped),
are never compared with this one's embeddings; the error says so.

One user-facing quantity everywhere (CLI, JSON, HTTP API, web page): the **cosine
similarity** between the probe's embedding and a user's templates, in [-1, 1], higher = more
alike. The threshold is a minimum similarity, as in biomatch.calibration: accept iff
similarity ≥ threshold; a threshold outside [-1, 1] is refused.

``micro_batch=True`` embeds concurrent requests together (biomatch.gallery.batching): one
``embedder.embed`` call for every image that arrives while the previous batch runs.

Identify can re-rank its shortlist with RSM (``rescore="rsm"``, see ``RSMOptions``): the
order of the top ``shortlist`` users then follows the RSM dissimilarity, while the accept
decision still compares the chosen user's cosine score with the (cosine) threshold.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from biomatch.data.images import load_image
from biomatch.errors import BiomatchError, InputError, NotFoundError, StateError
from biomatch.gallery.batching import MicroBatcher
from biomatch.gallery.search import SEARCH_KINDS, Searcher, build_searcher
from biomatch.gallery.store import TemplateStore, UserInfo, validate_user_id
from biomatch.matching.rsm import draw_references
from biomatch.models.embedder import Embedder

ImageLike = Image.Image | bytes | str | Path
Policy = Literal["max", "mean"]
MAX_ENROL_IMAGES = 50
RESCORE_KINDS = ("none", "rsm")


def template_key(embedder: Embedder) -> str:
    """What templates are stored under: ``embedder.embedder_id`` (model + preprocessing) if the
    embedder defines one, else ``embedder.model_hash`` (an embedder whose preprocessing is fixed)."""
    key = getattr(embedder, "embedder_id", None)
    return str(key) if key else embedder.model_hash


@dataclass(frozen=True)
class RSMOptions:
    """RSM re-scoring of identify's shortlist (biomatch.matching.rsm).

    For the query q and a shortlisted user u with templates t:
        R(q, t) = mean_{r in refs, owner(r) != u} |S(q, r) - S(t, r)|  +  alpha * S(q, t)
    with S = (1 - cos) / 2 (dissimilarity, 0 = identical); u's R is the mean (policy "mean")
    or the minimum (policy "max") over their templates; lower R = better match. ``refs`` are
    ``m`` templates drawn with ``seed`` (``draw_references``, None = all) out of every template
    in the gallery (store order); the candidate's own templates are left out of its pairs, so
    references are always disjoint from the pair. A user for whom no reference remains (a
    one-user gallery) gets the direct term only.
    """

    m: int | None = 30
    alpha: float = 1.0
    seed: int = 0
    shortlist: int = 10

    def __post_init__(self) -> None:
        if self.m is not None and (not isinstance(self.m, int) or self.m < 1):
            raise InputError(f"RSM needs m >= 1 references (or None = all), got {self.m!r}")
        if not math.isfinite(self.alpha) or self.alpha < 0:
            raise InputError(f"RSM alpha must be a finite number >= 0, got {self.alpha}")
        if not isinstance(self.shortlist, int) or not 1 <= self.shortlist <= 1000:
            raise InputError(f"RSM shortlist must be between 1 and 1000, got {self.shortlist!r}")


@dataclass(frozen=True)
class Match:
    """One candidate user with their aggregated cosine similarity (policy mean or max).

    ``rsm``: the user's RSM dissimilarity when identify re-ranked its shortlist with RSM
    (lower = better; None otherwise or outside the shortlist).
    """

    user: str
    similarity: float
    rsm: float | None = None


@dataclass(frozen=True)
class EnrollResult:
    user: str
    added: int
    total: int


@dataclass(frozen=True)
class VerifyResult:
    """1:1 decision: `accepted` iff similarity ≥ threshold (both cosine similarities in [-1, 1])."""

    user: str
    accepted: bool
    similarity: float
    threshold: float


@dataclass(frozen=True)
class IdentifyResult:
    """1:N decision: `user` is the best candidate if its similarity ≥ threshold, else None ("unknown")."""

    user: str | None
    threshold: float
    candidates: list[Match] = field(default_factory=list)


@dataclass
class _Gallery:
    revision: int
    labels: list[str]  # row label of each searched vector
    n_users: int
    searcher: Searcher
    refs: np.ndarray | None = None  # RSM references (M, dim), drawn from the gallery's templates
    ref_owners: np.ndarray | None = None  # (M,) user of each reference


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
        rescore: str = "none",
        rescore_options: RSMOptions | dict[str, object] | None = None,
        micro_batch: bool = False,
        batch_max: int = 32,
        batch_wait_s: float = 0.002,
        batch_workers: int = 1,
    ) -> None:
        if policy not in ("max", "mean"):
            raise InputError(f"unknown enrolment policy {policy!r}; choose 'max' or 'mean'")
        threshold = check_threshold(threshold)
        self.embedder = embedder
        self.store = store
        self.threshold = float(threshold)
        self.policy: Policy = policy
        self.search_kind = search
        self.search_options = dict(search_options or {})
        self._embed_takes_names = "names" in inspect.signature(embedder.embed).parameters
        self.rescorer = rescorer  # (query (dim,), shortlist (n, dim)) -> similarity scores (n,)
        if rescore not in RESCORE_KINDS:
            raise InputError(f"unknown rescoring {rescore!r}; choose one of {', '.join(RESCORE_KINDS)}")
        if rescore == "rsm" and rescorer is not None:
            raise InputError("pass either rescore='rsm' or a custom rescorer, not both")
        self.rescore = rescore
        if isinstance(rescore_options, RSMOptions):
            self.rsm = rescore_options
        else:
            try:
                self.rsm = RSMOptions(**dict(rescore_options or {}))  # type: ignore[arg-type]
            except TypeError as exc:
                raise InputError(f"bad RSM options {rescore_options}: {exc}") from exc
        self._lock = threading.Lock()
        self._gallery: _Gallery | None = None
        # Embedders that expose their stages (FaceEmbedder: prepare → preprocess.batch → embed_arrays)
        # let the per-image work (face detection, alignment, guard, resizing) run in each request's
        # own thread, concurrently, and batch only the model forward; others batch `embed(list)`.
        self._staged = all(callable(getattr(embedder, a, None)) for a in ("prepare", "embed_arrays")) and callable(
            getattr(getattr(embedder, "preprocess", None), "batch", None))
        batch_fn = self._forward_batch if self._staged else self._embed_batch
        self.batcher = MicroBatcher(batch_fn, batch_max, batch_wait_s, batch_workers) if micro_batch else None
        if search not in SEARCH_KINDS:
            raise InputError(f"unknown search kind {search!r}; choose one of {', '.join(SEARCH_KINDS)}")

    @property
    def model_hash(self) -> str:
        """SHA-256 of the embedder's weights (what a calibrated threshold is bound to)."""
        return self.embedder.model_hash

    @property
    def embedder_id(self) -> str:
        """The key this service's templates are stored under (model + preprocessing)."""
        return template_key(self.embedder)

    # -- embedding --------------------------------------------------------------------
    def _embed_batch(self, images: Sequence[Image.Image], names: Sequence[str]) -> np.ndarray:
        if self._embed_takes_names:  # e.g. FaceEmbedder names the image in "no face found"
            return np.asarray(self.embedder.embed(list(images), names=list(names)), dtype=np.float32)  # type: ignore[call-arg]
        return np.asarray(self.embedder.embed(list(images)), dtype=np.float32)

    def _forward_batch(self, arrays: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
        """One model forward for the prepared inputs of many requests."""
        return np.asarray(self.embedder.embed_arrays(np.concatenate(list(arrays))), dtype=np.float32)  # type: ignore[attr-defined]

    def _prepare(self, img: Image.Image, name: str) -> np.ndarray:
        """The per-image stages of a staged embedder, in the caller's thread: (1, C, H, W)."""
        emb = self.embedder
        return np.asarray(emb.preprocess.batch(emb.prepare([img], [name])), dtype=np.float32)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Stop the micro-batching worker, if any (the store is the caller's to close)."""
        if self.batcher is not None:
            self.batcher.close()

    def embed(self, image: ImageLike, name: str = "image") -> np.ndarray:
        """One image → one unit (dim,) vector; errors name the image."""
        try:
            try:
                img = image if isinstance(image, Image.Image) else load_image(image)
            except Image.DecompressionBombError as exc:
                raise InputError(f"{name}: too many pixels to decode safely ({exc})") from exc
            if self.batcher is not None:
                out = self.batcher.embed(self._prepare(img, name) if self._staged else img, name)
            else:
                out = self._embed_batch([img], [name])
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
        self.store.add(user, vectors, self.embedder_id)
        total = len(self.store.templates(self.embedder_id, user=user))
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
        templates = self.store.templates(self.embedder_id, user=user)
        if len(templates) == 0:
            raise StateError(self._mismatch_message(f"user {user!r} has no templates"))
        query = self.embed(image, _name(image, 0))
        score = self._score_user(query, templates.vectors)
        return VerifyResult(user, score >= self.threshold, score, self.threshold)

    def identify(self, image: ImageLike, k: int = 5) -> IdentifyResult:
        """1:N: top-k users by policy score; the best one if within threshold, else unknown."""
        if not 1 <= k <= 100:
            raise InputError(f"k must be between 1 and 100, got {k}")
        gallery = self._current_gallery()
        query = self.embed(image, _name(image, 0))
        if self.rescore == "rsm":
            matches = self._rsm_rerank(gallery, query, self._top_users(gallery, query, max(k, self.rsm.shortlist)))[:k]
        else:
            matches = self._top_users(gallery, query, k)
        best = matches[0] if matches and matches[0].similarity >= self.threshold else None
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
        return [Match(u, s) for u, s in ranked]

    def _rescore(self, query: np.ndarray, users: list[str]) -> list[tuple[str, float]]:
        """Optional re-scoring of the shortlist (e.g. RSM) with each user's templates."""
        rescored = [(u, self._score_user(query, self.store.templates(self.embedder_id, u).vectors)) for u in users]
        return sorted(rescored, key=lambda t: -t[1])

    def _rsm_rerank(self, gallery: _Gallery, query: np.ndarray, matches: list[Match]) -> list[Match]:
        """Re-order the first ``shortlist`` matches by RSM (ascending, ties keep cosine order)."""
        assert gallery.refs is not None and gallery.ref_owners is not None
        head, tail = matches[: self.rsm.shortlist], matches[self.rsm.shortlist :]
        q = query.astype(np.float64)
        refs = gallery.refs.astype(np.float64)
        q_to_refs = (1.0 - refs @ q) / 2.0  # (M,)
        scored = []
        for m in head:
            t = self.store.templates(self.embedder_id, m.user).vectors.astype(np.float64)  # (T, dim)
            direct = (1.0 - t @ q) / 2.0  # (T,)
            use = gallery.ref_owners != m.user
            if use.any():
                t_to_refs = (1.0 - t @ refs[use].T) / 2.0  # (T, M_u)
                rel = np.abs(q_to_refs[use][None, :] - t_to_refs).mean(axis=1)
            else:
                rel = np.zeros(len(t))
            r = rel + self.rsm.alpha * direct
            value = float(r.mean() if self.policy == "mean" else r.min())
            scored.append(Match(m.user, m.similarity, value))
        order = sorted(range(len(scored)), key=lambda i: (scored[i].rsm, i))
        return [scored[i] for i in order] + tail

    def _mismatch_message(self, what: str) -> str:
        key = self.embedder_id
        others = {h: n for h, n in self.store.model_hashes().items() if h != key}
        if not others:
            return f"{what}: enrol first"
        siblings = getattr(self.embedder, "sibling_ids", None)
        known: dict[str, str] = siblings() if callable(siblings) else {}
        listing = ", ".join(
            f"{n} from {known[h]} ({h[:12]})" if h in known else f"{n} from model {h[:12]}"
            for h, n in sorted(others.items())
        )
        current = f"{self.embedder.name} ({key[:12]})"
        prep = getattr(self.embedder, "preprocessing", None)
        if isinstance(prep, dict) and "input" in prep:
            current = f"{self.embedder.name} on input '{prep['input']}' ({key[:12]})"
        return (
            f"{what} made by the current model {current}; the store holds templates of other models "
            f"or preprocessings ({listing}), which cannot be compared: re-enrol"
        )

    def _current_gallery(self) -> _Gallery:
        """The searchable gallery for this model, rebuilt only when the store's revision moves."""
        with self._lock:
            rev = self.store.revision()
            if self._gallery is not None and self._gallery.revision == rev:
                return self._gallery
            t = self.store.templates(self.embedder_id)
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
            refs = owners = None
            if self.rescore == "rsm":  # the same seeded draw while the gallery does not change
                pick = draw_references(len(t), self.rsm.m, self.rsm.seed).numpy()
                refs, owners = t.vectors[pick].copy(), np.asarray(t.users, dtype=object)[pick]
            self._gallery = _Gallery(rev, labels, len(set(labels)), searcher, refs, owners)
            return self._gallery


def check_threshold(threshold: float) -> float:
    """A threshold is a minimum cosine similarity: a finite number in [-1, 1]."""
    value = float(threshold)
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise InputError(
            f"threshold {threshold} is not a cosine similarity: it must be between -1 and 1 "
            "(accept when similarity >= threshold)"
        )
    return value


def _user_means(users: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Mean template per user (not re-normalized: its dot product is the mean similarity)."""
    names, inverse = np.unique(np.asarray(users, dtype=object), return_inverse=True)
    sums = np.zeros((len(names), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, vectors)
    counts = np.bincount(inverse, minlength=len(names))[:, None]
    return [str(n) for n in names], (sums / counts).astype(np.float32)
