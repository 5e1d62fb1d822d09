"""CLI commands of the metric-learning workbench: train one strategy, compare them all, the
embedding-dimension study with maps, and the look-alike search. Heavy imports stay inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DatasetArg = Annotated[str, typer.Argument(help="lfw62, gtsrb_small, or any folder with one sub-folder per identity")]
Backbone = Annotated[str, typer.Option(help="frozen source (efficientnet_lite0/2, mobilefacenet) or tiny_cnn (from scratch)")]


def _base(backbone: str, strategy: str, dim: int, epochs: int, lr: float, seed: int, image_size: int,
          augment: str):
    import torch

    from biomatch.workbench.experiment import ExperimentConfig

    torch.set_num_threads(1)  # shared 2-core machines: one thread per experiment
    return ExperimentConfig(strategy=strategy, backbone=backbone, dim=dim, epochs=epochs, lr=lr, seed=seed,
                            image_size=image_size, augment=augment)


def train_identity(
    dataset: DatasetArg,
    strategy: Annotated[str, typer.Option(help="contrastive, triplet_random, triplet_batch_all, triplet_batch_hard, "
                                          "triplet_semi_hard, multi_similarity, arcface")] = "triplet_batch_hard",
    backbone: Backbone = "efficientnet_lite0",
    dim: Annotated[int, typer.Option(help="embedding dimension")] = 128,
    epochs: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    image_size: Annotated[int, typer.Option(help="input size for tiny_cnn")] = 64,
    augment: Annotated[str, typer.Option(help="image-mode augmentation: none, shift, shift_flip, sign (affine ±10°, zoom, colour; no flip)")] = "shift",
    out: Annotated[Optional[Path], typer.Option(help="folder for curves, per-class plot, summary")] = None,
) -> None:
    """Train one loss/mining strategy and report k-NN / NCM test accuracy."""
    from biomatch.workbench.compare import compare_strategies

    comp = compare_strategies(dataset, _base(backbone, strategy, dim, epochs, lr, seed, image_size, augment),
                              [strategy], out)
    typer.echo(comp.table())
    if out:
        typer.echo(f"wrote {out}/loss_curves.png, val_accuracy.png, per_class_accuracy.png, summary.json")


def compare(
    dataset: DatasetArg,
    backbone: Backbone = "efficientnet_lite0",
    strategies: Annotated[str, typer.Option(help="comma-separated; 'all' = every strategy")] = "all",
    dim: int = 128,
    epochs: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    image_size: int = 64,
    augment: str = "shift",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("reports/workbench"),
) -> None:
    """Train every strategy under one config; one loss plot, one validation-accuracy plot, a table."""
    from biomatch.workbench.compare import compare_strategies
    from biomatch.workbench.experiment import STRATEGIES

    names = list(STRATEGIES) if strategies == "all" else [s.strip() for s in strategies.split(",") if s.strip()]
    base = _base(backbone, names[0], dim, epochs, lr, seed, image_size, augment)
    comp = compare_strategies(dataset, base, names, out)
    typer.echo(comp.table())
    typer.echo(f"wrote {out}/loss_curves.png and {out}/val_accuracy.png")


def embedding_map(
    dataset: DatasetArg,
    backbone: Backbone = "efficientnet_lite0",
    strategy: str = "triplet_batch_hard",
    dims: Annotated[str, typer.Option(help="comma-separated embedding dimensions")] = "2,16,32,64,128",
    epochs: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    image_size: int = 64,
    augment: str = "shift",
    tsne: Annotated[bool, typer.Option(help="also draw t-SNE maps (slower)")] = True,
    projector: Annotated[bool, typer.Option(help="export TensorBoard projector TSVs of test embeddings")] = False,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("reports/embedding_maps"),
) -> None:
    """Accuracy vs embedding dimension; 2-D maps drawn directly, n-D with PCA / t-SNE."""
    from biomatch.errors import InputError
    from biomatch.workbench.dimension import dimension_study, dimension_table

    try:
        dim_list = [int(d) for d in dims.split(",") if d.strip()]
    except ValueError as exc:
        raise InputError(f"--dims must be comma-separated integers, got {dims!r}") from exc
    base = _base(backbone, strategy, dim_list[0], epochs, lr, seed, image_size, augment)
    results = dimension_study(dataset, base, dim_list, out, tsne=tsne, projector=projector)
    typer.echo(dimension_table(results))
    typer.echo(f"wrote maps to {out}")


AGGREGATE_HELP = ("identity score: centroid (cosine to the identity's mean embedding), top3 (mean of its 3 most "
                  "similar images) or nearest (its single most similar image; favours people with many photos)")


def lookalike(
    image: Annotated[Path, typer.Argument(help="query image (any photo; the face is detected and aligned)")],
    gallery: Annotated[Path, typer.Option(help="gallery folder: one sub-folder per identity")],
    k: Annotated[int, typer.Option("-k", "--k", help="number of look-alike identities")] = 5,
    embedder: Annotated[str, typer.Option(help="auto, face (MobileFaceNet) or a backbone name")] = "auto",
    identity: Annotated[Optional[str], typer.Option(help="the query's own identity, to exclude (auto when the "
                                                   "query lies in the gallery)")] = None,
    aggregate: Annotated[str, typer.Option(help=AGGREGATE_HELP)] = "centroid",
    detect: Annotated[bool, typer.Option("--detect/--no-detect", help="find the face in the query; --no-detect "
                                         "takes the query as an already framed face crop")] = True,
    out: Annotated[Path, typer.Option(help="image grid PNG")] = Path("lookalikes.png"),
) -> None:
    """Find the k gallery identities most alike to IMAGE and write a grid (query + look-alikes).

    Scores are cosine similarities (higher = more alike). A query without a face is an error
    (exit code 2) unless --no-detect is given.
    """
    from biomatch.lookalike import LookalikeFinder, lookalike_grid

    finder = LookalikeFinder(gallery, embedder, aggregate=aggregate)
    if finder.n_without_face:
        typer.echo(f"note: no face found in {finder.n_without_face} of {len(finder.samples)} gallery images; "
                   "they are left out")
    matches, crop, how = finder.search(image, k, exclude_identity=identity, detect=detect)
    typer.echo(f"query {image.name}: {how}; identity score = {finder.aggregate} cosine similarity (higher = more alike)")
    for rank, m in enumerate(matches, 1):
        typer.echo(f"{rank}. {m.identity}  similarity {m.similarity:.4f}  ({m.path.name})")
    path = lookalike_grid(crop, matches, out, title=f"{image.name} — {finder.embedder} embedder, {how}")
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add the workbench commands to the app."""
    app.command("train-identity")(train_identity)
    app.command("compare-losses")(compare)
    app.command("embedding-map")(embedding_map)
    app.command("lookalike")(lookalike)
