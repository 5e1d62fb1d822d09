"""Shared fixtures: the real 11k Hands data (shared copy or vendored sample) and a tmp cache."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def hands_samples():
    from biomatch.hands.protocol import load_hands

    return load_hands()


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOMATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
