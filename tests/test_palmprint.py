"""Palmprint data layout, CompCode encoding/matching and the session protocol on real ROIs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomatch.errors import InputError, NotFoundError
from biomatch.matching.rsm import RSM
from biomatch.metrics.verification import eer
from biomatch.palmprint.compcode import CompCode, shifted_hamming
from biomatch.palmprint.data import load_rois, load_samples, palm_labels, split_sessions
from biomatch.palmprint.protocol import compute_session_scores


def test_sessions_and_palm_ids_follow_the_source_layout() -> None:
    tongji = load_samples("tongji")
    s1, s2 = split_sessions(tongji)
    assert len(s1) == len(s2) == 100
    assert palm_labels(s1).tolist() == palm_labels(s2).tolist() == np.repeat(np.arange(10), 10).tolist()
    assert s1[10].path.name == "00011.bmp" and s1[10].palm == 1
    p1, p2 = split_sessions(load_samples("polyu"))
    assert len(p1) == len(p2) == 60 and {s.path.name[0] for s in p2} == {"2"}
    with pytest.raises(NotFoundError, match="unknown palmprint dataset"):
        load_samples("casia")


def test_compcode_bits_encode_circular_orientation_distance() -> None:
    # 3-bit Hamming distance between orientation codes equals min(|a-b|, 6-|a-b|)
    from biomatch.palmprint.compcode import _BITS

    for a in range(6):
        for b in range(6):
            assert int((_BITS[a] != _BITS[b]).sum()) == min(abs(a - b), 6 - abs(a - b))


def test_compcode_finds_the_line_orientation_and_tolerates_shifts() -> None:
    img = np.ones((1, 128, 128), np.float32)
    img[0, :, 62:66] = 0.0  # a dark vertical line
    code = CompCode().encode(img)
    assert code.shape == (1, 3, 32, 32)
    # on the line, the winner is the vertical-line filter (Gabor theta = 0 -> stripes along y)
    assert torch.equal(code[0, :, 10, 16], torch.tensor([0.0, 0.0, 0.0]))
    shifted = np.roll(img, 8, axis=2)  # 2 code pixels
    c2 = CompCode().encode(shifted)
    assert float(shifted_hamming(code, c2, 2)[0, 0]) < 0.05 < float(shifted_hamming(code, c2, 0)[0, 0])
    with pytest.raises(InputError, match="grayscale"):
        CompCode().encode(np.zeros((128, 128), np.float32))


def test_compcode_matches_palms_across_sessions() -> None:
    s1, s2 = split_sessions(load_samples("polyu"))
    cc = CompCode()
    a, b = cc.encode(load_rois(s1)), cc.encode(load_rois(s2))
    d = cc.dissimilarity(b, a).numpy()
    same = palm_labels(s2)[:, None] == palm_labels(s1)[None, :]
    assert d.min() >= 0 and d.max() <= 1
    assert d[same].mean() + 0.1 < d[~same].mean()
    assert eer(-d.ravel(), same.ravel().astype(int)) < 0.05


def test_protocol_pairs_labels_and_rsm_direction_on_tongji() -> None:
    torch.set_num_threads(1)
    ss = compute_session_scores(CompCode(max_shift=0), "tongji")
    s, y = ss.scores("all-vs-all")
    assert s.size == 100 * 99 // 2 and int(y.sum()) == 10 * 45
    s_e, y_e = ss.scores("test-vs-enrolled")
    assert s_e.size == 100 * 100 and int(y_e.sum()) == 10 * 100
    r, _ = ss.scores("all-vs-all", RSM(m=30, alpha=1.0))
    # lower RSM = same palm: genuine pairs have the higher (= -RSM) scores
    assert r[y == 1].mean() > r[y == 0].mean()
    assert eer(r, y) <= eer(s, y)
