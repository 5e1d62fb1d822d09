"""Curve and embedding-map plots: files written, bad input refused, projector TSV format."""

from __future__ import annotations

import numpy as np
import pytest

from biomatch.errors import InputError
from biomatch.viz.curves import plot_confusion, plot_curves, plot_per_class_accuracy
from biomatch.viz.embedding_maps import export_projector, plot_embedding_map, project_2d


def test_curves_and_per_class_plots(tmp_path):
    p = plot_curves({"a": [1.0, 0.5, 0.2], "b": [10.0, 4.0, 1.0]}, tmp_path / "c.png", relative=True, logy=True,
                    mark_best="min")
    assert p.stat().st_size > 0
    assert plot_per_class_accuracy({"x": 0.5, "y": 1.0}, tmp_path / "pc.png").stat().st_size > 0
    assert plot_confusion(np.eye(3), ["a", "b", "c"], tmp_path / "cm.png").stat().st_size > 0
    with pytest.raises(InputError):
        plot_curves({}, tmp_path / "e.png")
    with pytest.raises(InputError):
        plot_curves({"a": []}, tmp_path / "e.png")
    with pytest.raises(InputError):
        plot_confusion(np.eye(3), ["a", "b"], tmp_path / "e.png")


def test_projection_rules():
    x = np.random.default_rng(0).normal(size=(30, 5))
    assert project_2d(x, "pca").shape == (30, 2)
    np.testing.assert_array_equal(project_2d(x[:, :2], "direct"), x[:, :2])
    with pytest.raises(InputError, match="2-D embeddings"):
        project_2d(x, "direct")
    with pytest.raises(InputError, match="unknown projection"):
        project_2d(x, "umap")


def test_embedding_map_and_projector(tmp_path):
    rng = np.random.default_rng(0)
    tr, te = rng.normal(size=(20, 2)), rng.normal(size=(8, 2))
    ytr, yte = np.arange(20) % 3, np.arange(8) % 3
    assert plot_embedding_map(tr, ytr, te, yte, tmp_path / "m.png", method="direct",
                              class_names=["a", "b", "c"]).stat().st_size > 0
    with pytest.raises(InputError):
        plot_embedding_map(tr, ytr[:-1], te, yte, tmp_path / "m2.png", method="direct")
    out = export_projector(te, ["a", "b", "c", "a", "b", "c", "a", "b"], tmp_path / "proj")
    rows = (out / "tensors.tsv").read_text().strip().split("\n")
    assert len(rows) == 8 and len(rows[0].split("\t")) == 2
    assert (out / "metadata.tsv").read_text().split("\n")[0] == "a"  # one column: no header
    out2 = export_projector(te, list("abcabcab"), tmp_path / "proj2", extra_columns={"split": ["test"] * 8})
    assert (out2 / "metadata.tsv").read_text().split("\n")[0] == "label\tsplit"
    assert "tensors.tsv" in (out2 / "projector_config.pbtxt").read_text()
