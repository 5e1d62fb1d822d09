"""A frozen-mode hands result is the same whatever torch's thread count: head training is
pinned to one thread (biomatch.hands.methods.HEAD_TRAIN_THREADS) and its parallel head groups
are bit-identical to one stack. Before the pin, a report seed gave R@1 0.675 in the benchmark
(1 thread) and 0.655 in the demo (2 threads)."""

from __future__ import annotations

import numpy as np
import torch

from biomatch.config import MethodConfig
from biomatch.hands.methods import run_method
from biomatch.hands.protocol import make_split
from biomatch.training import torch_threads


def test_result_does_not_depend_on_thread_count(hands_samples, tmp_path):
    cfg = MethodConfig(name="t", backbones=["efficientnet_lite0"], taps=["2:avg", "3:std"], mode="frozen",
                       head_dims=[64, 16], objective="cross_view", margin=0.1, sampler="pk_view", p=8, k=4,
                       batches_per_epoch=6, epochs=6, train_on_val=True, n_heads=3)
    both = sorted({s.identity for s in hands_samples if s.view == "dorsal"}
                  & {s.identity for s in hands_samples if s.view == "palmar"})[:36]
    split = make_split([s for s in hands_samples if s.identity in set(both)], 0)
    scores = []
    for threads in (1, 2):
        with torch_threads(threads):
            r = run_method(cfg, split, cache=tmp_path, progress=False)
        scores.append(r.score_matrix())
    np.testing.assert_array_equal(scores[0], scores[1])
    assert torch.get_num_threads() >= 1


def test_torch_threads_restores_the_setting():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
