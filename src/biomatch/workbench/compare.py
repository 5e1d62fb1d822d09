"""Train every loss/mining strategy on one dataset under one config and compare them: one plot
of the loss curves, one of validation accuracy per epoch, a table of final test accuracies and
a per-class accuracy plot of the best strategy."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from biomatch.data.datasets import Sample
from biomatch.results import markdown_table
from biomatch.workbench.data import IdentitySplit, load_split
from biomatch.workbench.experiment import (STRATEGIES, ExperimentConfig, ExperimentResult, baseline_metrics,
                                           load_image_tensor, run_experiment)
from biomatch.workbench.features import FeatureTable


class ImageCache:
    """Decoded, resized image tensors by path: each image is read once across strategies."""

    def __init__(self, size: int, progress: bool = False, standardize: bool = False, roi_crop: bool = False,
                 roi_margin: float = 0.0) -> None:
        self.size, self.progress, self.standardize, self._rows = size, progress, standardize, {}
        self.roi_crop, self.roi_margin = roi_crop, roi_margin

    def __call__(self, samples: Sequence[Sample]) -> torch.Tensor:
        todo = [s for s in samples if s.path not in self._rows]
        if todo:
            for s, x in zip(todo, load_image_tensor(todo, self.size, self.progress, self.standardize,
                                                            self.roi_crop, self.roi_margin)):
                self._rows[s.path] = x
        return torch.stack([self._rows[s.path] for s in samples])


def inputs_for(cfg: ExperimentConfig, split: IdentitySplit, cache: Path | None = None, progress: bool = True):
    """(features, images) for run_experiment: a FeatureTable in frozen mode, else an ImageCache."""
    if cfg.on_images:
        return None, ImageCache(cfg.image_size, progress, cfg.per_image_standardize, cfg.roi_crop,
                                  cfg.roi_margin)
    return FeatureTable(cfg.backbone, split.all_samples, cache, progress), None


@dataclass
class Comparison:
    dataset: str
    base: ExperimentConfig
    results: dict[str, ExperimentResult]
    baseline: dict[str, float] | None

    def table(self) -> str:
        rows = []
        if self.baseline:
            rows.append(["(no training: frozen features)", self.baseline["knn_accuracy"],
                         self.baseline["ncm_accuracy"], "-", "-", "-"])
        for name, r in self.results.items():
            rows.append([name, r.metrics["knn_accuracy"], r.metrics["ncm_accuracy"],
                         max(r.val_accuracy) if r.val_accuracy else float("nan"), r.history.best_epoch + 1,
                         f"{r.timing['train_s']:.0f}"])
        return markdown_table(["strategy", f"k-NN (k={self.base.knn_k}) test", "NCM test", "best val k-NN",
                               "best epoch", "train s"], rows)


def compare_strategies(dataset: str | Path, base: ExperimentConfig, strategies: Sequence[str] = tuple(STRATEGIES),
                       out_dir: Path | None = None, split: IdentitySplit | None = None, progress: bool = True,
                       cache: Path | None = None) -> Comparison:
    """Run `strategies` with everything else from `base`; write plots + summary to `out_dir`."""
    split = split or load_split(dataset, base.seed)
    features, images = inputs_for(base, split, cache, progress)
    results = {}
    for s in strategies:
        results[s] = run_experiment(replace(base, strategy=s), split, features, images, progress)
        if progress:
            m = results[s].metrics
            print(f"{s:20s} k-NN {m['knn_accuracy']:.3f}  NCM {m['ncm_accuracy']:.3f}  "
                  f"({results[s].timing['train_s']:.0f} s)", flush=True)
    comp = Comparison(split.dataset, base, results,
                      None if base.on_images else baseline_metrics(features, split, base.knn_k))
    if out_dir is not None:
        write_comparison(comp, Path(out_dir))
    return comp


def write_comparison(comp: Comparison, out: Path) -> dict[str, Path]:
    """loss_curves.png, val_accuracy.png, per_class_accuracy.png, summary.json, table.md."""
    from biomatch.metrics.classification import KNNClassifier, per_class_accuracy
    from biomatch.viz.curves import plot_curves, plot_per_class_accuracy

    out.mkdir(parents=True, exist_ok=True)
    mode = " (from scratch)" if comp.base.scratch else " (finetuned)" if comp.base.finetune else " (frozen) + head"
    what = f"{comp.dataset}, {comp.base.backbone}{mode}"
    paths = {
        "loss": plot_curves({k: r.history.loss for k, r in comp.results.items()}, out / "loss_curves.png",
                            title=f"Training loss — {what}", ylabel="mean batch loss", relative=True, logy=True),
        "val": plot_curves({k: r.val_accuracy for k, r in comp.results.items()}, out / "val_accuracy.png",
                           title=f"Validation k-NN accuracy — {what}", ylabel="accuracy", mark_best="max"),
    }
    best_name, best = max(comp.results.items(), key=lambda kv: kv[1].metrics["knn_accuracy"])
    knn = KNNClassifier(k=comp.base.knn_k).fit(best.train_emb, best.train_labels)
    pred = knn.predict(best.test_emb)
    per_class = {best.classes[c]: v for c, v in per_class_accuracy(best.test_labels, pred).items()}
    paths["per_class"] = plot_per_class_accuracy(per_class, out / "per_class_accuracy.png",
                                                 title=f"Per-class k-NN accuracy (test)\n{best_name} — {what}")
    summary = {"dataset": comp.dataset, "baseline": comp.baseline,
               "runs": {k: r.summary() for k, r in comp.results.items()}, "per_class_best": per_class}
    paths["summary"] = out / "summary.json"
    paths["summary"].write_text(json.dumps(summary, indent=2, default=lambda o: o.item()
                                           if isinstance(o, np.generic) else str(o)) + "\n")
    paths["table"] = out / "table.md"
    paths["table"].write_text(comp.table() + "\n")
    return paths
