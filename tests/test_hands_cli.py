"""The hand-matching CLI end to end on real 11k Hands images, with a tiny backbone and budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from biomatch.cli import app
from biomatch.config import MethodConfig, load_method
from biomatch.errors import InputError, NotFoundError, StateError
from biomatch.hands.methods import run_method
from biomatch.hands.model import HandEmbedder
from biomatch.hands.protocol import make_split
from biomatch.viz.hands_report import write_hands_report

TINY = {"backbones": ["tiny_cnn"], "image_size": 48, "head_dims": [32, 16], "epochs": 2, "p": 8, "k": 4,
        "mirror_gallery": True, "tta": True}


@pytest.fixture(scope="module")
def hands_subset(tmp_path_factory, hands_samples):
    """HandInfo.csv + images of 50 subjects with both views (a fast stand-in for the full set)."""
    import csv
    import os

    from biomatch.data.splits import cross_view_identities

    keep = set(cross_view_identities(hands_samples)[:50])
    root = tmp_path_factory.mktemp("hands50")
    (root / "images").mkdir()
    src = hands_samples[0].path.parent.parent
    with open(src / "HandInfo.csv", newline="") as fh, open(root / "HandInfo.csv", "w", newline="") as out:
        reader = csv.DictReader(fh)
        writer = csv.DictWriter(out, reader.fieldnames)
        writer.writeheader()
        for row in reader:
            if row["id"] in keep and (src / "images" / row["imageName"]).is_file():
                writer.writerow(row)
                os.symlink(src / "images" / row["imageName"], root / "images" / row["imageName"])
    return root


@pytest.fixture()
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"description": "tiny test method", **TINY}))
    return path


def test_config_validation_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: -3\nlosss: triplet\n")
    with pytest.raises(InputError, match=r"bad\.yaml.*epochs.*losss|bad\.yaml.*losss.*epochs|bad\.yaml"):
        load_method(bad)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping"):
        load_method(tmp_path / "list.yaml")
    with pytest.raises(NotFoundError):
        load_method(tmp_path / "missing.yaml")


def test_run_method_report_and_saved_model_roundtrip(hands_subset, tmp_cache, tmp_path):
    from biomatch.hands.protocol import load_hands

    cfg = MethodConfig(name="tiny", **TINY)
    split = make_split(load_hands(str(hands_subset)), seed=1)
    result = run_method(cfg, split, progress=False)
    assert len(result.queries) == result.query_emb.shape[0] and result.query_emb.shape[1] == 16
    assert 0 < result.metrics["recall@10"] <= 1 and result.metrics["mean_rank"] >= 1
    assert len(result.history.loss) == 2 and len(result.history.val) == 2
    page = write_hands_report([result], tmp_path / "report")
    for name in ("report.md", "cmc.png", "training_curves.png", "retrieval_examples.png"):
        assert (page.parent / name).stat().st_size > 0
    assert "recall@1" in (page.parent / "report.md").read_text()

    from biomatch.data.images import load_image
    from biomatch.hands.model import save_hand_model
    from biomatch.models.backbones import create_backbone

    model_path = save_hand_model(tmp_path / "m.pt", cfg, result.model, [create_backbone("tiny_cnn").weights_id])
    # The saved model rebuilds the seeded backbone and the head: it must reproduce the
    # embeddings of the evaluation (mirrored palmar + flip TTA included).
    emb = HandEmbedder(model_path)
    imgs = [load_image(s.path) for s in result.gallery[:3]]
    z = emb.embed(imgs, view="palmar")
    assert z.shape == (3, 16) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(z, result.gallery_emb[:3], atol=1e-4)
    q = emb.embed([load_image(s.path) for s in result.queries[:3]], view="dorsal")
    np.testing.assert_allclose(q, result.query_emb[:3], atol=1e-4)
    with pytest.raises(InputError, match="view"):
        emb.embed(imgs, view="sideways")
    blob = __import__("torch").load(model_path, weights_only=False)
    blob["weights_ids"] = ["someone-else"]
    __import__("torch").save(blob, tmp_path / "other.pt")
    with pytest.raises(StateError, match="backbone weights"):
        HandEmbedder(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a biomatch hand model"):
        HandEmbedder(tmp_path / "junk.pt")


def test_cli_train_embed_and_errors(tiny_config, tmp_cache, tmp_path, hands_samples, hands_subset):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tiny_config), "--seed", "2", "--out", str(out),
                                 "--data", str(hands_subset)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 2 and 0 <= metrics["recall@1"] <= 1
    images = [str(s.path) for s in hands_samples[:2]]
    result = runner.invoke(app, ["embed", str(out / "model.pt"), *images, "--out", str(tmp_path / "e.npy")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "e.npy").shape == (2, 16)
    for args in (["--help"], ["demo", "--help"], ["evaluate", "--help"], ["backbones"]):
        assert runner.invoke(app, args).exit_code == 0


def test_cli_main_prints_clear_error(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "biomatch.cli", "train", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "config not found" in proc.stderr


def test_saved_tap_ensemble_model_reproduces_evaluation(hands_subset, tmp_cache, tmp_path):
    """Method (d)'s shape: EfficientNet-Lite0 stage taps, train+val, a 2-head ensemble per backbone,
    score-level fusion of two backbones (Lite0 twice, to stay fast) and a filled background."""
    from biomatch.data.images import load_image
    from biomatch.hands.model import save_hand_model
    from biomatch.hands.protocol import load_hands
    from biomatch.models.backbones import create_backbone

    cfg = MethodConfig(name="taps", backbones=["efficientnet_lite0", "efficientnet_lite0"], image_size=96,
                       taps=["2:avg", "3:std"], head_dims=[32, 16], objective="cross_view", sampler="pk_view", p=8,
                       k=4, epochs=1, train_on_val=True, n_heads=2, fusion="score", background="fill")
    result = run_method(cfg, make_split(load_hands(str(hands_subset)), seed=0), progress=False)
    assert result.query_emb.shape[1] == 64 and not result.history.val
    wid = create_backbone("efficientnet_lite0").weights_id
    path = save_hand_model(tmp_path / "d.pt", cfg, result.model, [wid, wid])
    emb = HandEmbedder(path)
    assert emb.dim == 64
    z = emb.embed([load_image(s.path) for s in result.gallery[:4]], view="palmar")
    np.testing.assert_allclose(z, result.gallery_emb[:4], atol=1e-4)
    q = emb.embed([load_image(s.path) for s in result.queries[:4]], view="dorsal")
    np.testing.assert_allclose(q, result.query_emb[:4], atol=1e-4)


@pytest.mark.parametrize("variant", ["aligned", "parts"])
def test_saved_landmark_variant_model_reproduces_evaluation(hands_subset, tmp_cache, tmp_path, variant):
    """A backbone entry that reads landmark crops (canonical crop or parts mosaic): the saved
    model finds the landmarks itself and gives the embeddings of the evaluation, which read
    them from the landmark cache."""
    pytest.importorskip("mediapipe")
    from biomatch.data.images import load_image
    from biomatch.hands.model import save_hand_model
    from biomatch.hands.protocol import load_hands
    from biomatch.models.backbones import create_backbone

    cfg = MethodConfig(name="v", backbones=["efficientnet_lite0", f"efficientnet_lite0@{variant}"], image_size=96,
                       taps=["3:avg"], head_dims=[32, 16], objective="cross_view", sampler="pk_view", p=8, k=4,
                       epochs=1, train_on_val=True, fusion="score")
    result = run_method(cfg, make_split(load_hands(str(hands_subset)), seed=0), progress=False)
    wid = create_backbone("efficientnet_lite0").weights_id
    emb = HandEmbedder(save_hand_model(tmp_path / "v.pt", cfg, result.model, [wid, wid]))
    z = emb.embed([load_image(s.path) for s in result.gallery[:3]], view="palmar")
    np.testing.assert_allclose(z, result.gallery_emb[:3], atol=1e-4)
    q = emb.embed([load_image(s.path) for s in result.queries[:3]], view="dorsal")
    np.testing.assert_allclose(q, result.query_emb[:3], atol=1e-4)


def test_demo_trains_the_best_method_and_quotes_the_recorded_references():
    """Without --references the demo trains only the best method (the 4-minute budget) and its
    notes quote (a), (b) and the best method from the report-seed result files."""
    import json

    from biomatch.commands import hands
    from biomatch.hands.protocol import BEST_METHOD
    from biomatch.results import RESULTS_DIR

    assert [p.stem for p in hands._demo_configs(False)] == [BEST_METHOD]
    assert [p.stem for p in hands._demo_configs(True)] == [*hands.REFERENCE_METHODS, BEST_METHOD]
    notes = hands._demo_notes(10, references=False)
    assert "--references" in notes
    for name in (*hands.REFERENCE_METHODS, BEST_METHOD):
        rec = json.loads((RESULTS_DIR / f"hands_dorsal_palmar_{name}_report.json").read_text())
        assert f"{name} R@1 {rec['metrics']['recall@1']['mean']:.3f}" in notes
