"""Issue #11.8 / #12.4-5: every CLI failure is one line `error: …` with exit code 2, markup is literal,
--help shows defaults, read-only commands never create a store, scores are similarities."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from biomatch.gallery.toy import pattern_images

if TYPE_CHECKING:
    from conftest import CliResult

PIX = ["--embedder", "pixels", "--threshold", "0.5"]


@pytest.fixture(autouse=True)
def _runner(run_cli) -> None:
    global _RUN
    _RUN = run_cli


def cli(*args: str, home: Path) -> CliResult:
    """The entry point `biomatch.cli.main` in this process, with a private $BIOMATCH_HOME."""
    return _RUN(*args, env={"BIOMATCH_HOME": str(home)})


def one_error_line(res: CliResult, text: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and text in lines[0], res.stderr


@pytest.fixture
def imgs(tmp_path: Path) -> list[str]:
    paths = []
    for i, img in enumerate(pattern_images(1, 3, seed=0)):
        paths.append(str(tmp_path / f"a{i}.png"))
        img.save(paths[-1])
    return paths


def test_usage_errors_are_one_line(tmp_path: Path, imgs: list[str]) -> None:
    home = tmp_path / "home"
    one_error_line(cli("enroll", "carol", "--store", str(tmp_path / "x.db"), home=home), "Missing argument")
    one_error_line(cli("identify", imgs[0], "-k", "abc", home=home), "'-k'")
    one_error_line(cli("serve", "--port", "70000", home=home), "'--port'")
    one_error_line(cli("nosuchcommand", home=home), "No such command")
    assert not (tmp_path / "x.db").exists()


def test_markup_in_user_ids_and_paths_is_printed_literally(tmp_path: Path, imgs: list[str]) -> None:
    home = tmp_path / "home"
    one_error_line(cli("enroll", "[/]x", imgs[0], "--embedder", "pixels", home=home), "invalid user id '[/]x'")
    one_error_line(cli("enroll", "[bold]x", imgs[0], "--embedder", "pixels", home=home), "'[bold]x'")
    odd = tmp_path / "[/]dir"
    one_error_line(cli("enroll", "al", str(odd / "p.png"), "--embedder", "pixels", home=home), "[/]dir/p.png")


def test_trailing_newline_user_id_refused(tmp_path: Path, imgs: list[str]) -> None:
    """Issue #11.5: `carl\\n` was enrolled as a user distinct from `carl`."""
    home = tmp_path / "home"
    one_error_line(cli("enroll", "carl\n", imgs[0], "--embedder", "pixels", home=home), "invalid user id")
    assert not (home / "gallery.db").exists()


def test_decompression_bomb_and_bad_store_folder(tmp_path: Path, imgs: list[str]) -> None:
    home = tmp_path / "home"
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpx: PIL refuses it as a decompression bomb
    one_error_line(cli("enroll", "al", str(bomb), "--embedder", "pixels", home=home), "bomb.png")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_error_line(cli("enroll", "al", imgs[0], "--embedder", "pixels", "--store", str(blocker / "sub" / "g.db"),
                       home=home), "cannot create the folder")


@pytest.mark.parametrize("value", ["-5", "2", "nan"])
def test_threshold_must_be_a_similarity(tmp_path: Path, imgs: list[str], value: str) -> None:
    home = tmp_path / "home"
    assert cli("enroll", "al", imgs[0], "--embedder", "pixels", home=home).returncode == 0
    res = cli("verify", "al", imgs[1], "--embedder", "pixels", "--threshold", value, home=home)
    one_error_line(res, "between -1 and 1")


def test_read_only_commands_do_not_create_a_store(tmp_path: Path, imgs: list[str]) -> None:
    home = tmp_path / "home"
    typo = tmp_path / "typo.db"
    for args in (["verify", "al", imgs[0], *PIX], ["identify", imgs[0], *PIX], ["users", "list"],
                 ["users", "delete", "al"]):
        one_error_line(cli(*args, "--store", str(typo), home=home), "no template store at")
    assert not typo.exists() and not home.exists()
    res = cli("enroll", "al", imgs[0], "--embedder", "pixels", "--store", str(typo), home=home)
    assert res.returncode == 0 and f"created template store: {typo}" in res.stdout
    res = cli("enroll", "al", imgs[1], "--embedder", "pixels", "--store", str(typo), home=home)
    assert f"template store: {typo}" in res.stdout and "created" not in res.stdout
    failed = tmp_path / "new.db"
    one_error_line(cli("enroll", "al", str(tmp_path / "missing.png"), "--embedder", "pixels", "--store", str(failed),
                       home=home), "image not found")
    assert not failed.exists()  # a failed first enrolment leaves no empty store


def test_verify_speaks_similarity(tmp_path: Path, imgs: list[str]) -> None:
    """Issue #12.4: verify printed a distance next to a similarity threshold."""
    home = tmp_path / "home"
    cli("enroll", "al", imgs[0], imgs[1], "--embedder", "pixels", home=home)
    res = cli("verify", "al", imgs[2], *PIX, home=home)
    assert res.returncode == 0 and res.stdout.startswith("accept al: similarity 0.9")
    assert "(accept at >= 0.5000)" in res.stdout and "distance" not in res.stdout
    out = json.loads(cli("verify", "al", imgs[2], *PIX, "--json", home=home).stdout)
    assert set(out) == {"user", "accepted", "similarity", "threshold"}
    out = json.loads(cli("identify", imgs[2], *PIX, "--json", home=home).stdout)
    assert set(out["candidates"][0]) == {"user", "similarity", "rsm"}


def test_help_shows_defaults_and_plain_flags(tmp_path: Path) -> None:
    """Issue #12.5: rich markup ate `[default: …]`; flags showed `<bool>` placeholders."""
    home = tmp_path / "home"
    serve = cli("serve", "--help", home=home).stdout
    assert "[default: $BIOMATCH_TOKEN" in serve and "[default: 8000" in serve
    assert "[default: $BIOMATCH_HOME/gallery.db" in " ".join(serve.split())
    assert "<bool>" not in serve and "<bool>" not in cli("verify", "--help", home=home).stdout


def test_serve_on_a_busy_port_fails_before_announcing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = cli("serve", "--port", str(port), "--embedder", "pixels", "--threshold", "0.5", "--token", "t",
                  home=home)
    one_error_line(res, f"cannot listen on 127.0.0.1:{port}")
    assert "serving on" not in res.stdout
