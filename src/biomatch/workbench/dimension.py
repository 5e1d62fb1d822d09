"""Embedding-dimension study: train one strategy at several embedding sizes, tabulate accuracy
vs dimension and draw the maps (2-D directly; n-D with PCA and t-SNE), train | test side by
side, coloured by class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from biomatch.results import markdown_table
from biomatch.workbench.data import IdentitySplit, load_split
from biomatch.workbench.experiment import ExperimentConfig, ExperimentResult, run_experiment

DEFAULT_DIMS = (2, 16, 32, 64, 128)


def dimension_study(dataset: str | Path, base: ExperimentConfig, dims: Sequence[int] = DEFAULT_DIMS,
                    out_dir: Path | None = None, split: IdentitySplit | None = None, maps: bool = True,
                    tsne: bool = True, progress: bool = True, cache: Path | None = None,
                    projector: bool = False) -> dict[int, ExperimentResult]:
    """One run per dimension; with `out_dir`, maps per dimension + table.md (+ projector TSVs)."""
    from biomatch.workbench.compare import inputs_for

    split = split or load_split(dataset, base.seed)
    features, images = inputs_for(base, split, cache, progress)
    results: dict[int, ExperimentResult] = {}
    for d in dims:
        results[d] = run_experiment(replace(base, dim=int(d)), split, features, images, progress)
        if progress:
            m = results[d].metrics
            print(f"dim {d:4d}: k-NN {m['knn_accuracy']:.3f}  NCM {m['ncm_accuracy']:.3f}", flush=True)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(dimension_table(results) + "\n")
        if maps:
            draw_maps(results, out, split.dataset, tsne=tsne, seed=base.seed)
        if projector:
            from biomatch.viz.embedding_maps import export_projector

            for d, r in results.items():
                export_projector(r.test_emb, [r.classes[c] for c in r.test_labels], out / f"projector_d{d}")
    return results


def dimension_table(results: dict[int, ExperimentResult]) -> str:
    rows = [[d, r.metrics["knn_accuracy"], r.metrics["ncm_accuracy"], max(r.val_accuracy)]
            for d, r in sorted(results.items())]
    return markdown_table(["dim", "k-NN test", "NCM test", "best val k-NN"], rows)


def draw_maps(results: dict[int, ExperimentResult], out: Path, dataset: str, tsne: bool = True,
              seed: int = 0) -> list[Path]:
    """map_d2_direct.png for 2-D; map_d<n>_pca.png (+ _tsne) for the others."""
    from biomatch.viz.embedding_maps import plot_embedding_map

    paths = []
    for d, r in sorted(results.items()):
        methods = ["direct"] if d == 2 else ["pca"] + (["tsne"] if tsne else [])
        for method in methods:
            paths.append(plot_embedding_map(
                r.train_emb, r.train_labels, r.test_emb, r.test_labels, out / f"map_d{d}_{method}.png",
                method=method, seed=seed, class_names=r.classes,
                title=f"{dataset}, {r.config.backbone}, {r.config.strategy}, dim {d} "
                      f"(test k-NN {r.metrics['knn_accuracy']:.3f})"))
    return paths
