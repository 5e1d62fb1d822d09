"""Stacked head training gives the same heads as training them one by one with `fit`."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from biomatch.data.samplers import PKSampler
from biomatch.hands.methods import FeatureDataset
from biomatch.hands.stacked import fit_stacked, stackable
from biomatch.models.heads import ProjectionHead
from biomatch.objectives import make_objective
from biomatch.training import TrainConfig, fit


@pytest.mark.parametrize("objective", [make_objective("cross_view", margin=0.1),
                                       make_objective("cross_view_softmax", temperature=0.1)],
                         ids=["batch_hard", "softmax"])
def test_stacked_training_matches_fit_head_by_head(objective):
    rng = np.random.default_rng(0)
    n, ids = 120, 20
    labels = np.repeat(np.arange(ids), n // ids)
    views = np.tile([0, 1], n // 2)
    dims = [24, 17]  # two blocks of different widths: the narrower is zero-padded
    feats = [torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)) for d in dims]
    heads = []
    for h, d in enumerate(dims * 2):
        torch.manual_seed(h)
        heads.append(ProjectionHead([d, 16, 8]))
    inputs = [feats[h % 2] for h in range(len(heads))]
    cfg = TrainConfig(epochs=3, lr=1e-2, seed=0)

    def sampler(seed):
        return PKSampler(labels.tolist(), 6, 2, views.tolist(), view_aware=True, batches_per_epoch=4, seed=seed,
                         view_pair=(0, 1))

    one_by_one = [copy.deepcopy(h) for h in heads]
    for h, head in enumerate(one_by_one):
        ds = FeatureDataset(inputs[h].numpy(), None, labels.tolist(), views, False, 0)
        fit(head, ds, sampler(100 + h), objective, cfg, None, progress=False)
    assert stackable(heads)
    fit_stacked(heads, inputs, [sampler(100 + h) for h in range(len(heads))], torch.as_tensor(labels),
                torch.as_tensor(views), objective, cfg)
    x = [torch.from_numpy(rng.normal(size=(10, dims[h % 2])).astype(np.float32)) for h in range(len(heads))]
    for h in range(len(heads)):
        for (name, a), b in zip(heads[h].state_dict().items(), one_by_one[h].state_dict().values()):
            if name in ("net.0.bias", "net.1.running_mean"):
                # the bias before BatchNorm gets a zero gradient up to rounding, which Adam then
                # scales to steps of size ~lr: noise in both runs, cancelled by BN's mean
                continue
            torch.testing.assert_close(a.float(), b.float(), atol=1e-4, rtol=1e-3)
        # batch statistics cancel that bias, so the trained functions agree
        heads[h].train()
        one_by_one[h].train()
        with torch.no_grad():
            torch.testing.assert_close(heads[h](x[h]), one_by_one[h](x[h]), atol=1e-4, rtol=1e-3)
    assert not stackable([ProjectionHead([4, 3])])  # one layer: not the stacked structure


def _toy_heads(seed: int = 0, hidden: int = 32):
    rng = np.random.default_rng(seed)
    n, ids = 120, 20
    labels = np.repeat(np.arange(ids), n // ids)
    views = np.tile([0, 1], n // 2)
    dims = [24, 17, 24, 17, 9, 13, 21]
    feats = [torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)) for d in dims]
    heads = []
    for h, d in enumerate(dims):
        torch.manual_seed(h)
        heads.append(ProjectionHead([d, hidden, 8]))

    def samplers():
        return [PKSampler(labels.tolist(), 6, 2, views.tolist(), view_aware=True, batches_per_epoch=4,
                          seed=100 + h, view_pair=(0, 1)) for h in range(len(heads))]

    return heads, feats, samplers, torch.as_tensor(labels), torch.as_tensor(views)


@pytest.mark.parametrize("hidden", [32, 48], ids=["groupable", "one_stack"])
def test_parallel_stacked_training_is_bit_identical_to_one_stack(hidden):
    """The head groups trained in threads end with exactly the weights of one stack (one
    intra-op thread, as run_method trains), so a result does not depend on the worker count.
    Hidden width 48 is not a multiple of GROUPABLE_HIDDEN: split into groups, these heads' weights
    differed from one stack's (measured), so they train as one stack."""
    from biomatch.hands.stacked import GROUPABLE_HIDDEN, fit_stacked_parallel
    from biomatch.training import torch_threads

    assert (hidden % GROUPABLE_HIDDEN == 0) == (hidden == 32)
    heads, feats, samplers, labels, views = _toy_heads(hidden=hidden)
    cfg = TrainConfig(epochs=3, lr=1e-2, seed=0)
    objective = make_objective("cross_view", margin=0.1)
    together = [copy.deepcopy(h) for h in heads]
    with torch_threads(1):
        fit_stacked(together, feats, samplers(), labels, views, objective, cfg)
        histories = fit_stacked_parallel(heads, feats, samplers(), labels, views, objective, cfg, workers=2)
    assert len(histories) == len(heads) and all(len(h.loss) == 3 for h in histories)
    for a, b in zip(heads, together):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name


def test_fused_adamw_trains_the_heads_of_the_default_adamw_up_to_rounding(monkeypatch):
    """fit_stacked steps torch's fused AdamW for speed (one pass over the stacked weights): the same
    algorithm as the default single-tensor AdamW, so after a few steps the heads agree with that
    one's up to rounding, and the parallel groups stay bit-identical to one stack (test above)."""
    from biomatch.training import torch_threads

    heads, feats, samplers, labels, views = _toy_heads()
    cfg = TrainConfig(epochs=3, lr=1e-2, seed=0, weight_decay=1e-3)
    objective = make_objective("cross_view", margin=0.1)
    default = [copy.deepcopy(h) for h in heads]
    start = [copy.deepcopy(h) for h in heads]
    seen = []
    adamw = torch.optim.AdamW

    def single_tensor(*args, **kw):
        seen.append(kw.pop("fused", None))
        return adamw(*args, **kw, foreach=False)

    with torch_threads(1):
        fit_stacked(heads, feats, samplers(), labels, views, objective, cfg)
        monkeypatch.setattr(torch.optim, "AdamW", single_tensor)
        fit_stacked(default, feats, samplers(), labels, views, objective, cfg)
    assert seen == [True]
    for a, b, s in zip(heads, default, start):
        assert not torch.equal(a.net[0].weight, s.net[0].weight)  # trained
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            if name in ("net.0.bias", "net.1.running_mean"):
                continue  # the bias before BatchNorm only moves by rounding noise (see the first test)
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_input_dropout_keeps_heads_independent_of_their_stackmates():
    """With input dropout each head draws its masks from its own seeded generator: threads or one
    stack give bit-identical heads, rate 0 is the plain training, and a rate > 0 trains other heads."""
    from biomatch.hands.stacked import fit_stacked_parallel
    from biomatch.training import torch_threads

    heads, feats, samplers, labels, views = _toy_heads()
    cfg = TrainConfig(epochs=3, lr=1e-2, seed=0)
    objective = make_objective("cross_view", margin=0.1)
    seeds = [7 + h for h in range(len(heads))]
    plain, zero, together = ([copy.deepcopy(h) for h in heads] for _ in range(3))
    with torch_threads(1):
        fit_stacked(plain, feats, samplers(), labels, views, objective, cfg)
        fit_stacked(zero, feats, samplers(), labels, views, objective, cfg, input_dropout=0.0, seeds=seeds)
        fit_stacked(together, feats, samplers(), labels, views, objective, cfg, input_dropout=0.3, seeds=seeds)
        fit_stacked_parallel(heads, feats, samplers(), labels, views, objective, cfg, workers=2,
                             input_dropout=0.3, seeds=seeds)
        alone = copy.deepcopy(_toy_heads()[0][2])  # head 2 in a stack of its own, same seed
        fit_stacked([alone], [feats[2]], [samplers()[2]], labels, views, objective, cfg, pad_to=24,
                    input_dropout=0.3, seeds=[seeds[2]])
    for a, b, c in zip(heads, together, zero):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    for a, b in zip(zero, plain):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    assert not torch.equal(together[0].net[0].weight, plain[0].net[0].weight)
    for (name, x), y in zip(alone.state_dict().items(), together[2].state_dict().values()):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="one seed per head"):
        fit_stacked(heads, feats, samplers(), labels, views, objective, cfg, input_dropout=0.3, seeds=seeds[:2])
    with pytest.raises(ValueError, match="input_dropout must be in"):
        fit_stacked(heads, feats, samplers(), labels, views, objective, cfg, input_dropout=1.0, seeds=seeds)
