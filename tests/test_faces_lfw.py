"""pairs.txt parsing: layout, labels, folds and malformed files."""

from __future__ import annotations

import numpy as np
import pytest

from biomatch.errors import InputError, NotFoundError
from biomatch.faces.lfw import default_pairs, parse_pairs

SMALL = """2\t1
Ann\t1\t2
Bob\t1\tCid\t3
Dan\t2\t4
Ann\t2\tEve\t10
"""


def test_parse_small(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text(SMALL)
    p = parse_pairs(f)
    assert p.left == ["images/Ann/Ann_0001.jpg", "images/Bob/Bob_0001.jpg", "images/Dan/Dan_0002.jpg", "images/Ann/Ann_0002.jpg"]
    assert p.right[3] == "images/Eve/Eve_0010.jpg"
    assert p.labels.tolist() == [1, 0, 1, 0] and p.folds.tolist() == [0, 0, 1, 1]
    a, b = p.index_pairs(p.images)
    assert [p.images[i] for i in a] == p.left and [p.images[i] for i in b] == p.right


@pytest.mark.parametrize(
    "text, msg",
    [("2 1\nAnn 1 2\n", "expected 4 pair lines"), ("x y\n", "first line"),
     ("1 1\nAnn 1 x\nB 1 C 2\n", "bad pair line"), ("1 1\nB 1 C 2\nAnn 1 2\n", "matched pair was expected")],
)
def test_malformed(tmp_path, text, msg):
    f = tmp_path / "pairs.txt"
    f.write_text(text)
    with pytest.raises(InputError, match=msg):
        parse_pairs(f)


def test_missing(tmp_path):
    with pytest.raises(NotFoundError):
        parse_pairs(tmp_path / "pairs.txt")


def test_real_view2():
    try:
        p = default_pairs()
    except NotFoundError:
        pytest.skip("lfw_pairs not available")
    assert len(p) == 6000 and p.labels.sum() == 3000 and len(p.images) == 7701
    assert np.bincount(p.folds).tolist() == [600] * 10
    assert all(p.labels[p.folds == k].sum() == 300 for k in range(10))
    assert p.path(p.images[0]).is_file()
