"""The GPU training path of issue #9, run on the CPU: the device-agnostic fit, its LR schedule,
the checkpoint cadence, and the weight shards that bring a GPU-trained net back."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biomatch.errors import InputError
from biomatch.palmprint.ccnet import CompNetMatcher, TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _tiny_fit(tmp_path: Path, max_epochs: int = 3, every: int = 2) -> CompNetMatcher:
    rng = np.random.default_rng(0)
    rois = rng.random((12, 16, 16)).astype(np.float32)
    labels = np.repeat([0, 1, 2], 4)
    cfg = TrainConfig(dim=8, n_orient=4, width=4, size=16, batch_size=4, max_epochs=max_epochs, time_budget_s=1e6)
    return CompNetMatcher(config=cfg, checkpoint=tmp_path / "net.pt", device="cpu", checkpoint_every=every).fit(rois, labels)


def test_epoch_bound_fit_anneals_to_zero_and_saves_the_last_epoch(tmp_path: Path) -> None:
    m = _tiny_fit(tmp_path, max_epochs=3, every=2)
    assert [h["epoch"] for h in m.history] == [1, 2, 3]
    assert m.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine over epochs reached its end
    assert m.history[0]["lr"] > 0
    state = torch.load(tmp_path / "net.pt", weights_only=False)
    assert state["epoch"] == 3  # epoch 3 is not a multiple of 2, but it is the last one
    assert next(m.model.parameters()).device.type == "cpu"


def test_shards_round_trip_to_the_same_embeddings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train = _module(ROOT / "scripts" / "gpu_palm_train.py", "gpu_palm_train")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    imp = _module(ROOT / "benchmarks" / "palmprint_gpu_import.py", "palmprint_gpu_import")
    m = _tiny_fit(tmp_path)
    monkeypatch.setattr(train, "SHARD_BYTES", 4_000)  # force several shards
    out = tmp_path / "out"
    out.mkdir()
    names = train.save_shards(tmp_path / "net.pt", out, "net")
    assert len(names) > 1 and all((out / n).stat().st_size < 4_000 + 20_000 for n in names)
    state = imp.merge_shards([out / n for n in names])
    torch.save(state, tmp_path / "merged.pt")
    x = np.random.default_rng(1).random((5, 16, 16)).astype(np.float32)
    assert torch.equal(CompNetMatcher.load(tmp_path / "merged.pt").encode(x), m.encode(x))
    with pytest.raises(InputError, match="incomplete shard set"):
        imp.merge_shards([out / n for n in names[1:]])
