"""The GPU finetune hand-off (issue #14): the vendored Lite0 of scripts/gpu_hands_finetune.py gives
biomatch's tap features, and the exported splits are HandsSplit's, subject-disjoint."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from biomatch.paths import REPO_ROOT

TAPS = ["2:avg", "2:std", "3:avg", "3:std", "4:avg", "4:std", "5:avg", "5:std"]


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gpu():
    return _load("scripts/gpu_hands_finetune.py", "gpu_hands_finetune")


@pytest.fixture(scope="module")
def export():
    return _load("benchmarks/hands_finetune_export.py", "hands_finetune_export")


def test_vendored_lite0_equals_biomatch_taps(gpu, export):
    from biomatch.hands.features import TapFeatures
    from biomatch.models.backbones import create_backbone

    ref = TapFeatures(create_backbone("efficientnet_lite0"), TAPS).eval()
    mine = gpu.Lite0Taps()
    mine.load_state_dict(export.lite0_stage5_state(), strict=True)
    mine.eval()
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(x), mine(x)
    assert a.shape == b.shape == (3, 512)
    assert torch.allclose(a, b, atol=1e-5)
    # and a different net gives different features (the comparison can fail)
    other = gpu.Lite0Taps().eval()
    with torch.no_grad():
        assert not torch.allclose(a, other(x), atol=1e-3)


def test_cross_view_loss_matches_biomatch(gpu):
    from biomatch.objectives import make_objective

    g = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    labels = torch.arange(16) // 4
    views = torch.tensor([0, 0, 1, 1] * 4)
    ref = make_objective("cross_view", margin=0.1)(emb, labels, views)
    assert torch.allclose(gpu.loss_fn(emb, labels, views), ref)


def test_sampler_gives_both_views_of_p_identities(gpu):
    labels = np.repeat(np.arange(10), 6)
    views = np.tile([0, 0, 0, 1, 1, 1], 10)
    s = gpu.PKViewSampler(labels, views, seed=0, p=4, k=4)
    b = s.batch()
    assert len(b) == 16 and len(set(labels[b])) == 4
    for lab in set(labels[b]):
        assert set(views[b][labels[b] == lab]) == {0, 1}


def test_export_splits_match_handssplit(tmp_path, export, hands_samples):
    from biomatch.hands.protocol import HandsSplit, make_split

    keep = sorted({s.identity for s in hands_samples})[:12]  # a small subset: seconds, landmarks cached
    samples = [s for s in hands_samples if s.identity in keep]
    meta = export.export(tmp_path, [0, 10], samples)
    names = meta["names"]
    assert names == sorted(names) and len(names) == len(samples)
    for seed in (0, 10):
        rec = meta["splits"][str(seed)]
        split = make_split(samples, seed)
        assert [names[i] for i in rec["train"]] == [s.path.name for s in split.train + split.val]
        assert [names[i] for i in rec["query"]] == [s.path.name for s in HandsSplit.queries(split.test)]
        assert [names[i] for i in rec["gallery"]] == [s.path.name for s in HandsSplit.gallery(split.test)]
        ids = meta["identities"]
        train_ids = {ids[i] for i in rec["train"]}
        test_ids = {ids[i] for i in rec["query"] + rec["gallery"]}
        assert train_ids and test_ids and not train_ids & test_ids
        assert all(meta["views"][i] == 0 for i in rec["query"]) and all(meta["views"][i] == 1 for i in rec["gallery"])
    z = np.load(tmp_path / "images.npz")
    assert len(z["offsets"]) == len(names) + 1
    assert json.loads((tmp_path / "meta.json").read_text())["weights_file"] == export.WEIGHTS_FILE


def test_fusion_choice_rule():
    fusion = _load("benchmarks/hands_finetune_fusion.py", "hands_finetune_fusion")
    table = {("A", 0.0): [{"recall@1": 0.70, "mean_rank": 3.0}],
             ("A", 0.5): [{"recall@1": 0.72, "mean_rank": 2.9}],
             ("B", 0.3): [{"recall@1": 0.718, "mean_rank": 2.5}],  # within 0.005 of the best R@1, lower rank
             ("B", 1.0): [{"recall@1": 0.60, "mean_rank": 1.0}]}  # lowest rank but far lower R@1
    assert fusion.choose(table) == ("B", 0.3)
