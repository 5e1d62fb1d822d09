"""CLI: evaluate-scores and plot on score files, with clear errors for bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from biomatch.cli import app
from biomatch.errors import InputError, NotFoundError
from biomatch.metrics.score_files import read_score_file, write_score_file
from biomatch.metrics.verification import eer


def _scores(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(50, int), np.zeros(500, int)]
    s = rng.normal(size=y.size) + 2 * y
    path = tmp_path / "sys.txt"
    write_score_file(path, s, y)
    return path, s, y


def test_score_file_round_trip_and_ccnet_labels(tmp_path: Path) -> None:
    path, s, y = _scores(tmp_path)
    s2, y2 = read_score_file(path)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(y2, y)
    ccnet = tmp_path / "ccnet.txt"
    ccnet.write_text("# distance label\n0.1 1\n\n0.4, -1\n0.3 -1\n")
    s3, y3 = read_score_file(ccnet, distances=True)
    assert s3.tolist() == [-0.1, -0.4, -0.3] and y3.tolist() == [1, 0, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [("0.5 1\nfoo 0\n", ":2: score 'foo'"), ("0.5 2\n", "label '2'"), ("0.5\n", "expected 'score label'"),
     ("", "no scored pairs"), ("nan 1\n", "not finite")],
)
def test_malformed_score_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text(text)
    with pytest.raises(InputError, match=message):
        read_score_file(bad)
    with pytest.raises(NotFoundError):
        read_score_file(tmp_path / "missing.txt")


def test_evaluate_scores_prints_eer_and_writes_plots(tmp_path: Path) -> None:
    path, s, y = _scores(tmp_path)
    result = CliRunner().invoke(app, ["evaluate-scores", str(path), "--plots", str(tmp_path / "p"), "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    assert f"{eer(s, y):.6f}" in result.output and "undefined" in result.output  # tar@far=1e-3 with 500 impostors
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"sys_hist.png", "sys_roc.png", "sys_det.png"}


def test_plot_compares_files(tmp_path: Path) -> None:
    path, s, y = _scores(tmp_path)
    other = tmp_path / "other.txt"
    write_score_file(other, s + 0.5 * y, y)
    result = CliRunner().invoke(app, ["plot", str(path), str(other), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert all((tmp_path / "o" / f"scores_{k}.png").stat().st_size > 1000 for k in ("hist", "roc", "det"))


def test_bad_file_gives_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    one_class = tmp_path / "gen.txt"
    one_class.write_text("0.9 1\n0.8 1\n")
    proc = subprocess.run([sys.executable, "-m", "biomatch.cli", "evaluate-scores", str(one_class)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no impostor pair" in proc.stderr
