"""The workbench runs end to end on tiny synthetic data: every strategy trains, training beats
the untrained features, runs are reproducible, and the comparison / dimension study write
their plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from biomatch.errors import InputError
from biomatch.workbench.compare import compare_strategies
from biomatch.workbench.data import load_split
from biomatch.workbench.dimension import dimension_study
from biomatch.workbench.experiment import STRATEGIES, ExperimentConfig, baseline_metrics, run_experiment

N_CLASSES, PER_CLASS = 6, 30


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """6 identities: a coloured square at a class-specific place on a noisy background."""
    root = tmp_path_factory.mktemp("synth")
    rng = np.random.default_rng(0)
    for c in range(N_CLASSES):
        (root / f"id{c}").mkdir()
        for i in range(PER_CLASS):
            img = rng.integers(0, 90, (16, 16, 3), dtype=np.uint8)
            y, x = (c // 3) * 8 + rng.integers(0, 3), (c % 3) * 5 + rng.integers(0, 2)
            img[y : y + 6, x : x + 5] = [(200, 40, 40), (40, 200, 40), (40, 40, 200)][c % 3]
            Image.fromarray(img).save(root / f"id{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def split(synth_root):
    return load_split(synth_root, seed=0, test_fraction=0.25, val_fraction=0.25)


def _hidden_signal_features(split):
    """Class signal in 6 of 30 dims (one-hot class centres), the rest large noise: k-NN on the
    raw features is poor, a trained head must find the useful dimensions."""
    rng = np.random.default_rng(1)
    table = {}
    for s in split.all_samples:
        c = split.classes.index(s.identity)
        signal = 2.0 * np.eye(N_CLASSES)[c] + 0.3 * rng.normal(size=N_CLASSES)
        table[s.path] = np.concatenate([signal, 1.5 * rng.normal(size=24)])
    return lambda samples: np.stack([table[s.path] for s in samples]).astype(np.float32)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_learns_on_frozen_features(split, strategy):
    torch.set_num_threads(1)
    feats = _hidden_signal_features(split)
    base = baseline_metrics(feats, split, knn_k=3)
    cfg = ExperimentConfig(strategy=strategy, backbone="fake", dim=8, hidden=0, epochs=30, lr=1e-2, p=6, k=4, knn_k=3)
    r = run_experiment(cfg, split, features=feats, progress=False)
    assert len(r.history.loss) == 30 and len(r.val_accuracy) == 30
    assert np.isfinite(r.history.loss).all()
    assert r.train_emb.shape == (len(split.train) + len(split.val), 8) and r.test_emb.shape == (len(split.test), 8)
    np.testing.assert_allclose(np.linalg.norm(r.test_emb, axis=1), 1.0, atol=1e-5)
    assert base["knn_accuracy"] < 0.6
    assert r.metrics["knn_accuracy"] >= base["knn_accuracy"] + 0.25, (strategy, base, r.metrics)


def test_runs_are_reproducible_and_seed_matters(split):
    feats = _hidden_signal_features(split)
    cfg = ExperimentConfig(strategy="contrastive", backbone="fake", dim=4, hidden=16, epochs=3, p=6, k=4)
    a = run_experiment(cfg, split, features=feats, progress=False)
    b = run_experiment(cfg, split, features=feats, progress=False)
    c = run_experiment(ExperimentConfig(**{**cfg.__dict__, "seed": 1}), split, features=feats, progress=False)
    assert a.history.loss == b.history.loss
    np.testing.assert_array_equal(a.test_emb, b.test_emb)
    assert a.history.loss != c.history.loss


def test_bad_configs_are_refused(split):
    with pytest.raises(InputError, match="unknown strategy"):
        ExperimentConfig(strategy="magic")
    with pytest.raises(InputError, match="precomputed features"):
        run_experiment(ExperimentConfig(backbone="efficientnet_lite0"), split, features=None, progress=False)


def test_scratch_comparison_writes_the_two_plots(split, tmp_path):
    base = ExperimentConfig(backbone="tiny_cnn", image_size=16, dim=8, hidden=0, epochs=2, p=6, k=2, knn_k=3)
    comp = compare_strategies("synth", base, ["contrastive", "triplet_random", "triplet_batch_hard"],
                              tmp_path, split=split, progress=False)
    assert set(comp.results) == {"contrastive", "triplet_random", "triplet_batch_hard"}
    for name in ("loss_curves.png", "val_accuracy.png", "per_class_accuracy.png", "summary.json", "table.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert "triplet_batch_hard" in (tmp_path / "table.md").read_text()


def test_dimension_study_draws_direct_pca_and_tsne_maps(split, tmp_path):
    base = ExperimentConfig(backbone="tiny_cnn", image_size=16, hidden=0, epochs=1, p=6, k=2, knn_k=3)
    res = dimension_study("synth", base, [2, 8], tmp_path, split=split, progress=False, projector=True)
    assert res[2].test_emb.shape[1] == 2 and res[8].test_emb.shape[1] == 8
    for name in ("map_d2_direct.png", "map_d8_pca.png", "map_d8_tsne.png", "table.md",
                 "projector_d8/tensors.tsv", "projector_d8/metadata.tsv"):
        assert (tmp_path / name).stat().st_size > 0
    assert not (tmp_path / "map_d2_pca.png").exists()


def test_finetune_mode_runs_end_to_end_on_images(split):
    cfg = ExperimentConfig(strategy="arcface", backbone="efficientnet_lite0", finetune=True, image_size=32, dim=8,
                           hidden=0, epochs=1, p=6, k=2, knn_k=3)
    assert cfg.on_images and not cfg.per_image_standardize  # ImageNet normalization for pretrained weights
    r = run_experiment(cfg, split, progress=False)
    assert r.test_emb.shape == (len(split.test), 8) and len(r.history.loss) == 1
    assert 0.0 <= r.metrics["knn_accuracy"] <= 1.0


def test_frozen_features_refuse_a_random_init_backbone(tmp_path):
    """Frozen features of unloaded weights would be noise: refused, with the reason."""
    from pathlib import Path

    from biomatch.data.datasets import Sample
    from biomatch.errors import InputError
    from biomatch.workbench.features import frozen_features

    with pytest.raises(InputError, match="no pretrained weights"):
        frozen_features("tiny_cnn", [Sample(Path("x.png"), "a")], cache=tmp_path)
