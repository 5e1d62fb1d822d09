"""The usage examples in the docstrings of the pure metric/scoring modules are true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["biomatch.hands.scoring", "biomatch.metrics.retrieval", "biomatch.metrics.verification",
           "biomatch.metrics.score_files", "biomatch.matching.distances", "biomatch.matching.rsm", "biomatch.losses",
           "biomatch.hands.sessions", "biomatch.hands.xqda", "biomatch.hands.parts",
           "biomatch.data.samplers", "biomatch.hands.features"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no docstring examples"
