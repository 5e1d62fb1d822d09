"""Look-alike PK batches (class-level hard mining) and the neighbour table they are drawn from."""

from collections import Counter

import numpy as np
import pytest

from biomatch.config import MethodConfig
from biomatch.data.samplers import LookalikePKSampler, PKSampler, cross_view_neighbours
from biomatch.errors import InputError
from biomatch.hands.methods import _make_sampler, lookalike_tables


def _old_pk_batches(sampler: PKSampler):
    """PKSampler's batches as written before `_choose` was factored out (a slow reference)."""
    rng = np.random.default_rng(sampler.seed + sampler.epoch)
    labels = np.array(sorted(sampler._groups))
    queue: list[int] = []
    for _ in range(sampler.batches_per_epoch):
        if len(queue) < sampler.p:
            queue += [int(x) for x in rng.permutation(labels) if int(x) not in queue]
        chosen, queue = queue[: sampler.p], queue[sampler.p:]
        batch: list[int] = []
        for label in chosen:
            parts = sampler._groups[label]
            counts = [sampler.k] if len(parts) == 1 else [(sampler.k + 1) // 2, sampler.k // 2]
            for part, count in zip(parts, counts):
                batch += rng.choice(part, size=count, replace=len(part) < count).tolist()
        yield batch


@pytest.mark.parametrize("view_aware", [False, True])
def test_pk_sampler_batches_unchanged_by_refactor(view_aware):
    labels = np.repeat(np.arange(23), 5)
    views = ["dorsal", "palmar", "dorsal", "palmar", "dorsal"] * 23
    for seed in (0, 7):
        sampler = PKSampler(labels, 6, 4, views, view_aware, batches_per_epoch=9, seed=seed)
        for epoch in (0, 3):
            sampler.set_epoch(epoch)
            assert list(sampler) == list(_old_pk_batches(sampler))


def _brute_neighbours(x, labels, views, top):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    ids = sorted(set(labels))
    mean = {}
    for i in ids:
        for v in ("dorsal", "palmar"):
            m = np.mean([x[n] for n in range(len(labels)) if labels[n] == i and views[n] == v], axis=0)
            mean[i, v] = m / np.linalg.norm(m)
    out = {}
    for a in ids:
        sims = [((mean[a, "dorsal"] @ mean[b, "palmar"] + mean[b, "dorsal"] @ mean[a, "palmar"]) / 2, b)
                for b in ids if b != a]
        out[a] = [b for _, b in sorted(sims, key=lambda t: -t[0])[:top]]
    return out


def test_cross_view_neighbours_match_a_loop():
    rng = np.random.default_rng(0)
    labels = list(np.repeat(np.arange(12), 4))
    views = ["dorsal", "dorsal", "palmar", "palmar"] * 12
    centres = rng.normal(size=(12, 8))
    x = centres[labels] + 0.3 * rng.normal(size=(48, 8))
    assert cross_view_neighbours(x, labels, views, top=3) == _brute_neighbours(x, labels, views, 3)
    with pytest.raises(InputError, match="do not match"):
        cross_view_neighbours(x[:5], labels, views)


def _table_sampler(group=4, top=3, seed=1):
    labels = np.repeat(np.arange(20), 4)
    views = ["dorsal", "palmar", "dorsal", "palmar"] * 20
    # five closed cliques of four look-alikes (0-3, 4-7, …); the 4th neighbour is an outsider
    table = {i: [4 * (i // 4) + (i + d) % 4 for d in (1, 2, 3)] + [(i + 4) % 20] for i in range(20)}
    return labels, views, table, LookalikePKSampler(labels, 8, 4, table, group, top, views=views, view_aware=True,
                                                    batches_per_epoch=6, seed=seed)


def test_lookalike_batches_are_groups_of_neighbours():
    labels, views, _, sampler = _table_sampler()
    batches = list(sampler)
    assert len(batches) == 6
    seen = set()
    for batch in batches:
        ids = list(dict.fromkeys(labels[batch].tolist()))  # identities in the order they were chosen
        assert len(ids) == 8 and set(Counter(labels[batch]).values()) == {4}
        for ident in ids:  # both views of every identity, as with view-aware PK sampling
            assert Counter(views[i] for i in batch if labels[i] == ident) == {"dorsal": 2, "palmar": 2}
        for g in (0, 4):  # an anchor, then its three top look-alikes: two whole cliques
            assert {i // 4 for i in ids[g:g + 4]} == {ids[g] // 4}
        seen |= set(ids)
    assert seen == set(range(20))  # anchors walk every identity, as in PKSampler
    assert batches == list(_table_sampler()[3])
    assert batches != list(_table_sampler(seed=2)[3])


def test_lookalike_members_come_from_the_anchors_top_neighbours():
    labels = np.repeat(np.arange(200), 2)
    views = ["dorsal", "palmar"] * 200
    table = {i: [(i + d) % 200 for d in range(1, 9)] for i in range(200)}  # a ring: groups overlap
    sampler = LookalikePKSampler(labels, 9, 2, table, group=3, top=2, views=views, view_aware=True,
                                 batches_per_epoch=20, seed=0)
    rng, queue, order = np.random.default_rng(0), [], np.arange(200)
    for _ in range(20):
        chosen, queue = sampler._choose(queue, order, rng)
        assert len(chosen) == len(set(chosen)) == 9 and not set(chosen) & set(queue)

    def near_pairs(batches):  # identities that are among the top-2 of another identity of their batch
        out = []
        for batch in batches:
            ids = set(labels[batch].tolist())
            out.append(sum(any(i in table[a][:2] for a in ids if a != i) for i in ids))
        return np.mean(out)

    plain = PKSampler(labels, 9, 2, views, True, batches_per_epoch=20, seed=0)
    assert near_pairs(sampler) >= 6 > near_pairs(plain) + 2  # 3 groups of 3: >= 6 of 9 by construction


def test_lookalike_group_of_one_is_plain_random_identities():
    labels, _, _, sampler = _table_sampler(group=1)
    for batch in sampler:
        assert len(set(labels[batch].tolist())) == 8


def test_lookalike_sampler_and_config_errors():
    labels, views, table, _ = _table_sampler()
    with pytest.raises(InputError, match="group"):
        LookalikePKSampler(labels, 8, 4, table, group=9, views=views, view_aware=True)
    with pytest.raises(InputError, match="cannot fill"):
        LookalikePKSampler(labels, 8, 4, table, group=4, top=2, views=views, view_aware=True)
    cfg = MethodConfig(name="x", backbones=["efficientnet_lite0"], sampler="pk_view_lookalike", p=8, k=4)
    with pytest.raises(InputError, match="neighbour table"):
        _make_sampler(cfg, [], list(labels), 0)


def test_lookalike_tables_one_per_block():
    rng = np.random.default_rng(1)
    labels = list(np.repeat(np.arange(10), 4))

    class S:  # the samplers read only `view`
        def __init__(self, view):
            self.view = view

    samples = [S(v) for v in ["dorsal", "dorsal", "palmar", "palmar"] * 10]
    canon = rng.normal(size=(40, 6))
    bounds = np.array([0, 2, 6])
    cfg = MethodConfig(name="x", backbones=["a", "b"], sampler="pk_view_lookalike", lookalike_top=3)
    tables = lookalike_tables(cfg, canon, bounds, labels, samples)
    views = [s.view for s in samples]
    assert tables == [cross_view_neighbours(canon[:, :2], labels, views, top=3),
                      cross_view_neighbours(canon[:, 2:], labels, views, top=3)]
    assert lookalike_tables(cfg.model_copy(update={"sampler": "pk_view"}), canon, bounds, labels, samples) == [None, None]
