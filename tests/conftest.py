"""Shared fixtures: the real 11k Hands data (shared copy or bundled), full datasets or a skip, a tmp cache.

Data resolves per dataset through biomatch.paths: $BIOMATCH_DATA, else ../shared/data, else the
bundled data/ (complete for hands11k and the 10-palm palmprint sets, a few test images for LFW and
AT&T). Checks that need a full dataset use `shared_dataset` and skip with a reason without it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config: pytest.Config) -> None:
    # the bundled subsets are what the tests are written for: no warning about them here
    config.addinivalue_line("filterwarnings", "ignore::biomatch.paths.BundledSubsetWarning")


def pytest_report_header(config: pytest.Config) -> str:
    import biomatch
    from biomatch.paths import VENDORED_DATA, shared_data_root

    shared = shared_data_root()
    where = f"shared data {shared}" if shared else "no shared data (bundled data only; full-dataset checks skip)"
    return f"biomatch from {Path(biomatch.__file__).parent}; {where}; bundled {VENDORED_DATA}"


@pytest.fixture(scope="session")
def shared_dataset() -> Callable[[str], Path]:
    """``shared_dataset(name)``: the full dataset's folder, or skip the test with the reason."""
    from biomatch.errors import NotFoundError
    from biomatch.paths import shared_dataset_dir

    def get(name: str) -> Path:
        try:
            return shared_dataset_dir(name)
        except NotFoundError as exc:
            pytest.skip(f"needs the full {name} dataset: {exc}")

    return get


@pytest.fixture(scope="session")
def hands_samples():
    from biomatch.hands.protocol import load_hands

    return load_hands()


@pytest.fixture(scope="session")
def tiny_fusion_case(hands_samples):
    """A 40-subject split and the fields of a one-epoch tiny-CNN method with XQDA fusion: the
    cheapest run_method that exercises the score-fusion steps that run after the heads."""
    from biomatch.hands.protocol import make_split

    ids = sorted({s.identity for s in hands_samples})[:40]
    split = make_split([s for s in hands_samples if s.identity in ids], seed=0)
    fields = dict(name="t", backbones=["tiny_cnn"], objective="cross_view", sampler="pk_view", p=4, k=4, epochs=1,
                  batches_per_epoch=2, head_dims=[16, 8], train_on_val=True, xqda_weight=0.3, xqda_pca=8)
    return split, fields


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOMATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@dataclass
class CliResult:
    """Exit code and captured output of one in-process CLI call (unpacks as code, out, err)."""

    returncode: int
    stdout: str
    stderr: str

    def __iter__(self):
        return iter((self.returncode, self.stdout, self.stderr))


@pytest.fixture()
def run_cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Call the real entry point `biomatch.cli.main` in this process: ``run_cli(*argv, env={...})``.

    In-process rather than a subprocess so the tests stay fast; exit codes come from SystemExit."""
    from biomatch.cli import main

    def run(*args: str, env: dict[str, str] | None = None) -> CliResult:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("COLUMNS", "200")
        monkeypatch.setattr(sys, "argv", ["biomatch", *args])
        capfd.readouterr()
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capfd.readouterr()
        return CliResult(code, out.out, out.err)

    return run
