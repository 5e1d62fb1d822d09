"""Typed, validated experiment configs loaded from YAML (configs/*.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from biomatch.errors import InputError, NotFoundError


class MethodConfig(BaseModel):
    """One dorsal→palmar method: features, head, objective, batches and optimization."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    backbones: list[str] = Field(default_factory=lambda: ["efficientnet_lite0"], min_length=1)
    pool: str = "avg"
    image_size: int | None = Field(default=None, ge=32, le=1024)
    mode: Literal["frozen", "finetune"] = "frozen"
    mirror_gallery: bool = False  # feed palmar images horizontally mirrored (aligns silhouettes)
    flip_augment: bool = False  # train on mirrored copies of both views at random
    tta: bool = False  # average the embeddings of each image and its mirror at test time
    head_dims: list[int] = Field(default_factory=lambda: [512, 128])
    normalize: bool = True
    dropout: float = Field(default=0.0, ge=0, lt=1)
    objective: Literal["pml", "cross_view", "cross_view_softmax", "pair_contrastive"] = "pml"
    temperature: float = Field(default=0.1, gt=0)  # of objective: cross_view_softmax
    loss: str = "triplet"
    miner: str = "batch_hard"
    margin: float | None = None
    sampler: Literal["pk", "pk_view", "pk_view_lookalike", "pairs"] = "pk"
    # pk_view_lookalike (biomatch.data.samplers.LookalikePKSampler, frozen heads only): each batch is
    # p // lookalike_group anchors, each with lookalike_group - 1 identities drawn from its lookalike_top
    # nearest by the head's frozen input features (dorsal mean vs palmar mean).
    lookalike_group: int = Field(default=4, ge=1)
    lookalike_top: int = Field(default=8, ge=1)
    p: int = Field(default=16, ge=2)
    k: int = Field(default=4, ge=1)
    pairs_per_batch: int = Field(default=64, ge=1)
    batches_per_epoch: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=40, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    backbone_lr: float = Field(default=1e-5, gt=0)
    warmup_head_epochs: int = Field(default=0, ge=0)
    patience: int = Field(default=0, ge=0)
    batch_size_embed: int = Field(default=64, ge=1)
    # Tap features (biomatch.hands.features): "<stage 1-7|head>:<avg|std|gem|gridN>" per entry;
    # empty = the backbone's pooled last feature map (`pool`).
    taps: list[str] = Field(default_factory=list)
    train_on_val: bool = False  # train the head on train + val for the fixed budget, no validation
    n_heads: int = Field(default=1, ge=1)  # ensemble of heads trained with different seeds
    # Test-time re-ranking (report as its own protocol row): k-reciprocal (Zhong et al. 2017)
    # or average query expansion (query side) with database-side augmentation (gallery side).
    rerank: Literal["none", "k_reciprocal", "query_expansion"] = "none"
    rerank_k1: int = Field(default=6, ge=1)
    rerank_k2: int = Field(default=3, ge=1)
    rerank_lambda: float = Field(default=0.3, ge=0, le=1)
    # Background control (biomatch.hands.masking): "fill" paints the background `background_color`
    # before the backbone (removes the photo-session cue of the sheet), "only" paints the hand and
    # keeps the background (a session-cue-only control). Features are cached under their own key.
    background: Literal["keep", "fill", "only"] = "keep"
    background_color: list[int] = Field(default_factory=lambda: [128, 128, 128], min_length=3, max_length=3)
    # Several backbones: "concat" = one head (ensemble) on the concatenated features; "score" = each
    # backbone its own n_heads heads, embeddings concatenated with equal weight (cosine = mean of the
    # per-backbone cosines).
    fusion: Literal["concat", "score"] = "concat"
    # Side-aware scoring (a separate protocol row: it reads the left/right label of query and
    # gallery images from HandInfo): this is added to the cosine of same-side gallery images.
    side_bonus: float = Field(default=0.0, ge=0)
    # Hand landmarks (biomatch.hands.landmarks): a backbone entry "<backbone>@aligned" reads the
    # canonical crop (middle finger up, palm scale fixed, thumb left) instead of the photo, and
    # "<backbone>@parts" the mosaic of upright fingers and palm centre (biomatch.hands.parts), both
    # falling back to the photo where no hand was found. `geometry_weight` > 0 adds that times the cosine of
    # within-subject-whitened landmark geometry (finger lengths/widths, gap angles) to the score;
    # pairs without landmarks get the query's mean geometry score (neutral), never dropped.
    geometry_weight: float = Field(default=0.0, ge=0)
    # Gallery-side score normalization (biomatch.hands.scoring), same protocol: it reads only the
    # training images and the gallery's enrolment labels, never other test queries.
    # `cohort_k` > 0: each gallery image's per-backbone score loses the mean of its k highest scores
    # against the training dorsal images (a "hub" palm that is close to every hand stops winning);
    # `identity_weight` > 0 adds that times the mean score of the gallery image's identity.
    cohort_k: int = Field(default=0, ge=0)
    identity_weight: float = Field(default=0.0, ge=0)
    # Score weight of each backbone entry with `fusion: score` (default: equal).
    fusion_weights: list[float] = Field(default_factory=list)
    # Extra training photos (biomatch.hands.extra_train), for training subjects only: "hires_180"
    # adds the 640×480 subset's photos that the low-res set lacks, converted like it (180×180).
    extra_train: Literal["none", "hires_180"] = "none"
    # Score fusion with XQDA (biomatch.hands.xqda), same protocol (fitted on the training images
    # only): final = z(scores) + xqda_weight × z(Σ_backbones z(−XQDA distance on the frozen features,
    # PCA-whitened to xqda_pca dims)), z = per-query z-score.
    xqda_weight: float = Field(default=0.0, ge=0)
    xqda_pca: int = Field(default=128, ge=1)
    xqda_lambda: float = Field(default=0.01, ge=0)
    # Extra taps that XQDA reads beside `taps` (e.g. "3:cov", channel covariances) and the heads do
    # not: computed in the same backbone pass, cached with the head taps (frozen mode, no mirroring).
    xqda_taps: list[str] = Field(default_factory=list)
    # The heads also read what XQDA reads: per backbone, its `xqda_taps` features PCA-whitened to
    # xqda_pca dims (the whitening XQDA fits on the training images) and L2-normalized, appended to
    # the head taps. Needs xqda_taps.
    heads_read_xqda: bool = False
    # Backbone entries whose XQDA features feed only the heads (heads_read_xqda), not the XQDA and
    # translation score sums (chosen on the tuning seeds for the hand-net branch, configs/hands_e8xpl1_xcov_trh_hn.yaml).
    xqda_score_skip: list[str] = Field(default_factory=list)
    # Share of the heads' input features dropped at random in every training step (inverted
    # dropout; frozen mode, stacked trainer only); nothing is dropped when embedding. 0 = off.
    input_dropout: float = Field(default=0.0, ge=0, lt=1)
    # Query-set re-ranking (biomatch.hands.query_set; a separate protocol row: each query's ranking
    # reads the other test queries, never a test label): the final scores of each query + this weight
    # × the similarity-weighted mean of its mutual `query_neighbours`-nearest test queries' scores,
    # dorsal→dorsal similarity from XQDA on the training dorsals (xqda_pca, xqda_lambda). 0 = off.
    query_neighbours: int = Field(default=0, ge=0)
    query_neighbour_weight: float = Field(default=1.0, ge=0)
    # Dorsal → palm translation (biomatch.hands.translation, fitted on the training images only):
    # final = (the scores above, z-scored unless XQDA already did) + translation_weight × z(Σ_backbones
    # z(cosine of the ridge-translated query and each palm, PCA-whitened to xqda_pca dims)). 0 = off.
    translation_weight: float = Field(default=0.0, ge=0)
    translation_lambda: float = Field(default=1.0, ge=0)
    # White-balanced skin colour (biomatch.hands.colour, fitted on the training images only): final =
    # (the scores above) + colour_weight × z(z(XQDA) + z(translation) / 3) of the colour descriptors,
    # with xqda_pca, xqda_lambda and translation_lambda. 0 = off.
    colour_weight: float = Field(default=0.0, ge=0)
    # What the tuning seeds said about this variant (shown in BENCHMARKS.md beside its row).
    verdict: str = ""

    @property
    def needs_landmarks(self) -> bool:
        """Whether the method reads hand landmarks (aligned crops or geometry)."""
        return self.geometry_weight > 0 or any("@" in name for name in self.backbones)

    @field_validator("backbones")
    @classmethod
    def _check_backbones(cls, names: list[str]) -> list[str]:
        for name in names:
            base, _, variant = name.partition("@")
            if variant not in ("", "aligned", "parts"):
                raise ValueError(f"backbone {name!r}: the variants are '<backbone>@aligned' and '<backbone>@parts'")
            if base == "mediapipe_hand" and variant != "aligned":
                raise ValueError(f"backbone {name!r}: the hand net reads the aligned crop only: 'mediapipe_hand@aligned'")
        return names

    @model_validator(mode="after")
    def _one_gallery_rescoring(self) -> MethodConfig:
        if self.cohort_k and self.rerank != "none":
            raise ValueError("cohort_k and rerank both re-score the gallery: use one")
        return self

    @model_validator(mode="after")
    def _colour_adds_to_fused_scores(self) -> MethodConfig:
        if self.colour_weight and not (self.xqda_weight or self.translation_weight):
            raise ValueError("colour_weight adds to the XQDA/translation-fused (z-scored) scores: "
                             "needs xqda_weight or translation_weight > 0")
        return self

    @model_validator(mode="after")
    def _query_set_needs_frozen(self) -> MethodConfig:
        if self.query_neighbours and self.mode != "frozen":
            raise ValueError("query_neighbours reads the frozen features of the queries: needs mode: frozen")
        if self.translation_weight and self.mode != "frozen":
            raise ValueError("translation_weight reads the frozen features: needs mode: frozen")
        return self

    @model_validator(mode="after")
    def _xqda_taps_need_xqda(self) -> MethodConfig:
        if self.xqda_taps:
            if not (self.taps and self.xqda_weight > 0 and self.mode == "frozen"):
                raise ValueError("xqda_taps needs taps, xqda_weight > 0 and mode: frozen")
            if self.mirror_gallery or self.flip_augment or self.tta:
                raise ValueError("xqda_taps does not support mirror_gallery, flip_augment or tta")
            if set(self.xqda_taps) & set(self.taps):
                raise ValueError(f"xqda_taps repeats taps the heads read: {sorted(set(self.xqda_taps) & set(self.taps))}")
        if self.heads_read_xqda and not self.xqda_taps:
            raise ValueError("heads_read_xqda needs xqda_taps (the features it appends to the heads' input)")
        unknown = set(self.xqda_score_skip) - set(self.backbones)
        if unknown:
            raise ValueError(f"xqda_score_skip names backbones the method does not have: {sorted(unknown)}")
        if self.xqda_score_skip and not self.xqda_taps:
            raise ValueError("xqda_score_skip needs xqda_taps (per-backbone XQDA blocks)")
        if set(self.backbones) <= set(self.xqda_score_skip) and (self.xqda_weight or self.translation_weight):
            raise ValueError("xqda_score_skip leaves no backbone for the XQDA and translation scores")
        return self

    @model_validator(mode="after")
    def _hand_net_is_not_mirrored(self) -> MethodConfig:
        hand_net = [b for b in self.backbones if b.partition("@")[0] == "mediapipe_hand"]
        if hand_net and (self.mirror_gallery or self.flip_augment or self.tta):
            raise ValueError(f"the {hand_net[0]} branch has no mirrored features: no mirror_gallery, flip_augment or tta")
        return self

    @field_validator("taps", "xqda_taps")
    @classmethod
    def _check_taps(cls, taps: list[str]) -> list[str]:
        from biomatch.hands.features import parse_tap

        for tap in taps:
            try:
                parse_tap(tap)
            except InputError as exc:
                raise ValueError(str(exc)) from exc
        return taps


def load_method(path: str | Path) -> MethodConfig:
    """Read and validate one YAML method config; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    try:
        return MethodConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"bad config {path}: {problems}") from exc
