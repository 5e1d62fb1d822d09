"""`biomatch enroll / verify / identify / users` through the real entry point (exit codes, messages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biomatch.gallery.toy import pattern_images


@pytest.fixture
def images(tmp_path: Path) -> dict[str, list[str]]:
    out = {}
    for ident, name in [(1, "alice"), (2, "bob"), (3, "carol")]:
        paths = []
        for i, img in enumerate(pattern_images(ident, 4, seed=0)):
            p = tmp_path / f"{name}{i}.png"
            img.save(p)
            paths.append(str(p))
        out[name] = paths
    return out


def test_cli_flow(tmp_path: Path, images, run_cli, monkeypatch) -> None:
    monkeypatch.setenv("BIOMATCH_HOME", str(tmp_path / "home"))
    common = ["--embedder", "pixels"]
    th = ["--threshold", "0.5"]
    code, out, _ = run_cli("enroll", "alice", *images["alice"][:3], *common)
    assert code == 0 and "3 template(s) added" in out
    assert (tmp_path / "home" / "gallery.db").is_file()  # the default store location
    run_cli("enroll", "bob", *images["bob"][:2], *common)

    code, out, _ = run_cli("verify", "alice", images["alice"][3], *common, *th)
    assert code == 0 and out.startswith("accept alice: similarity") and "(accept at >= 0.5000)" in out
    code, out, _ = run_cli("verify", "bob", images["alice"][3], *common, *th)
    assert code == 1 and out.startswith("reject bob")

    code, out, _ = run_cli("identify", images["bob"][3], "-k", "2", *common, *th)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "bob" and lines[1].startswith("  1. bob") and lines[2].startswith("  2. alice")
    code, out, _ = run_cli("identify", images["carol"][0], *common, *th, "--json")
    assert json.loads(out)["user"] is None
    code, out, _ = run_cli("identify", images["carol"][0], *common, *th)
    assert out.splitlines()[0] == "unknown"

    code, out, _ = run_cli("users", "list", "--json")
    assert [(u["user"], u["templates"]) for u in json.loads(out)] == [("alice", 3), ("bob", 2)]
    code, out, _ = run_cli("users", "delete", "bob")
    assert code == 0 and "deleted bob (2 template(s))" in out
    code, out, _ = run_cli("users", "list")
    assert out.startswith("alice\t3 template(s)")


def test_cli_errors(tmp_path: Path, images, run_cli) -> None:
    from biomatch.gallery.store import SQLiteStore

    SQLiteStore(tmp_path / "g.db").close()  # an existing, empty store (read-only commands refuse a missing one)
    store = ["--store", str(tmp_path / "g.db")]
    pix = ["--embedder", "pixels", "--threshold", "0.5"]
    cases = [
        (["identify", images["alice"][0], *store, *pix], "gallery is empty"),
        (["verify", "ghost", images["alice"][0], *store, *pix], "unknown user 'ghost'"),
        (["users", "delete", "ghost", *store], "unknown user 'ghost'"),
        (["enroll", "alice", str(tmp_path / "nope.png"), *store, "--embedder", "pixels"], "image not found"),
        (["enroll", "a b", images["alice"][0], *store, "--embedder", "pixels"], "invalid user id"),
        (["identify", images["alice"][0], *store, "--embedder", "pixels"], "no calibrated threshold"),
        (["identify", images["alice"][0], *store, "--embedder", "nope"], "unknown embedder 'nope'"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(*argv)
        assert code == 2 and message in " ".join(err.split()), (argv, err)
    corrupt = tmp_path / "bad.png"
    corrupt.write_bytes(Path(images["alice"][0]).read_bytes()[:50])
    code, _, err = run_cli("enroll", "alice", images["alice"][0], str(corrupt), *store, "--embedder", "pixels")
    assert code == 2 and "bad.png" in err
    code, out, _ = run_cli("users", "list", *store)
    assert out.strip() == "no users enrolled"  # the good image of the failed batch was not stored


def test_cli_with_face_model(tmp_path: Path, run_cli) -> None:
    """The real default embedder and its calibrated threshold on LFW62 crops."""
    pytest.importorskip("onnxruntime")
    from biomatch.paths import dataset_dir

    try:
        root = dataset_dir("lfw62")
    except Exception:  # noqa: BLE001
        pytest.skip("lfw62 not available")
    colin = sorted((root / "Colin_Powell").glob("*.jpg"))
    tony = sorted((root / "Tony_Blair").glob("*.jpg"))
    store = ["--store", str(tmp_path / "g.db"), "--embedder", "face-crop"]
    assert run_cli("enroll", "colin", *map(str, colin[:3]), *store).returncode == 0
    assert run_cli("enroll", "tony", *map(str, tony[:3]), *store).returncode == 0
    code, out, _ = run_cli("identify", str(tony[10]), *store)
    assert out.splitlines()[0] == "tony"
    code, out, _ = run_cli("verify", "colin", str(colin[10]), *store)
    assert code == 0 and out.startswith("accept colin")
    code, out, _ = run_cli("verify", "colin", str(tony[10]), *store)
    assert code == 1
    # a threshold calibrated for another model is refused
    other = tmp_path / "other.threshold.json"
    other.write_text(json.dumps({"model_sha256": "0" * 64, "threshold": 0.3, "target_far": 0.001, "far": 0.001,
                                 "tar": 0.9, "n_genuine": 1, "n_impostor": 1, "dataset": "x", "date": "x"}))
    code, _, err = run_cli("verify", "colin", str(colin[10]), *store, "--threshold-file", str(other))
    assert code == 2 and "calibrated for model sha256 000" in " ".join(err.split())


def test_cli_identify_with_rsm(tmp_path: Path, images, run_cli) -> None:
    """--rescore rsm and its options reach the service: same ranking and R values as the API."""
    from biomatch.gallery.service import GalleryService
    from biomatch.gallery.store import SQLiteStore
    from biomatch.gallery.toy import PixelEmbedder

    db = tmp_path / "g.db"
    base = ["--store", str(db), "--embedder", "pixels"]
    for name in ("alice", "bob", "carol"):
        run_cli("enroll", name, *images[name][:2], *base)
    rsm = ["--rescore", "rsm", "--rsm-m", "3", "--rsm-alpha", "0.5", "--rsm-seed", "4", "--shortlist", "2"]
    code, out, _ = run_cli("identify", images["bob"][3], "-k", "3", *base, "--threshold", "0.5", *rsm, "--json")
    got = json.loads(out)
    svc = GalleryService(PixelEmbedder(), SQLiteStore(db), 0.5, rescore="rsm",
                         rescore_options={"m": 3, "alpha": 0.5, "seed": 4, "shortlist": 2})
    want = svc.identify(images["bob"][3], k=3)
    assert code == 0 and got["user"] == want.user == "bob"
    assert [c["user"] for c in got["candidates"]] == [m.user for m in want.candidates]
    assert [c["rsm"] for c in got["candidates"]] == pytest.approx([m.rsm for m in want.candidates], abs=1e-9)
    assert got["candidates"][2]["rsm"] is None and got["candidates"][0]["rsm"] is not None  # beyond the shortlist
    other = GalleryService(PixelEmbedder(), SQLiteStore(db), 0.5, rescore="rsm",
                           rescore_options={"m": 3, "alpha": 1.0, "seed": 4, "shortlist": 2})
    assert other.identify(images["bob"][3], k=1).candidates[0].rsm != pytest.approx(got["candidates"][0]["rsm"])
    code, out, _ = run_cli("identify", images["bob"][3], *base, "--threshold", "0.5", *rsm)
    assert out.splitlines()[0] == "bob" and " rsm " in out.splitlines()[1]
    code, _, err = run_cli("identify", images["bob"][3], *base, "--threshold", "0.5", "--rescore", "knn")
    assert code == 2 and "unknown rescoring 'knn'" in err
