"""ONNX export and int8 quantization, checked against the torch / float models they come from."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from biomatch.errors import InputError, NotFoundError
from biomatch.export import (
    OnnxEmbedder,
    Preprocess,
    export_onnx,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from biomatch.faces.embedder import FLOAT_MODEL, INT8_MODEL, assets_dir
from biomatch.models.backbones import create_backbone
from biomatch.models.heads import EmbeddingModel, ProjectionHead

PREP64 = Preprocess(size=(64, 64), flip_tta=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = EmbeddingModel(create_backbone("tiny_cnn", pretrained=False), ProjectionHead([64, 32], normalize=False))
    x = torch.randn(6, 3, 64, 64)
    model.train()  # BN statistics from a forward pass, so eval mode is not an identity
    model(torch.randn(32, 3, 64, 64))
    model.eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", (64, 64))
    with torch.no_grad():
        ref = model(x).numpy()
    return model, path, x.numpy(), ref


def test_export_matches_torch_with_dynamic_batch(tiny):
    _, path, x, ref = tiny
    emb = OnnxEmbedder(path, preprocess=PREP64, batch_size=4)  # batches of 4 and 2, export dummy had 2
    assert emb.dim == 32
    np.testing.assert_allclose(emb.run(x), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb.embed_arrays(x), axis=1), 1.0, rtol=1e-5)
    assert not path.with_name(path.name + ".data").exists()  # one self-contained file


def test_static_and_dynamic_int8_agree_with_float(tiny, tmp_path):
    _, path, x, _ = tiny
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((32, 3, 64, 64)).astype(np.float32)
    f = OnnxEmbedder(path, preprocess=PREP64).embed_arrays(x)
    for q in (
        quantize_static_int8(path, tmp_path / "s.onnx", calib),
        quantize_dynamic_int8(path, tmp_path / "d.onnx"),
    ):
        e = OnnxEmbedder(q, preprocess=PREP64).embed_arrays(x)
        cos = (e * f).sum(1)
        assert cos.min() > 0.95, (q.name, cos)
        assert OnnxEmbedder(q, preprocess=PREP64).model_hash != OnnxEmbedder(path, preprocess=PREP64).model_hash


def test_static_int8_weight_layout(tiny, tmp_path):
    """uint8 weights by default (no 16-bit saturation on CPUs without VNNI), int8 when asked;
    the vendored face model is the uint8-weight kind."""
    import onnx

    _, path, x, _ = tiny

    def weight_zero_point_types(model_path) -> set[int]:
        graph = onnx.load(str(model_path)).graph
        inits = {i.name: i for i in graph.initializer}
        conv_weights = {n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
        # the DequantizeLinear nodes that feed a conv/matmul weight: their zero point's type
        return {inits[n.input[2]].data_type for n in graph.node
                if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights and len(n.input) > 2}

    unsigned = quantize_static_int8(path, tmp_path / "u.onnx", x)
    signed = quantize_static_int8(path, tmp_path / "s.onnx", x, signed_weights=True)
    assert weight_zero_point_types(unsigned) == {onnx.TensorProto.UINT8}
    assert weight_zero_point_types(signed) == {onnx.TensorProto.INT8}
    assert weight_zero_point_types(assets_dir() / INT8_MODEL) == {onnx.TensorProto.UINT8}


def test_batch_dynamic_mobilefacenet_equals_original_per_image():
    path = assets_dir() / FLOAT_MODEL
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    original = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((5, 3, 112, 112)).astype(np.float32)
    ref = np.concatenate([original.run(None, {"input0": x[i : i + 1]})[0] for i in range(5)])
    out = OnnxEmbedder(path, preprocess=Preprocess(), batch_size=5).run(x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_vendored_int8_agrees_with_float_on_faces():
    from PIL import Image

    from biomatch.faces.embedder import FaceEmbedder
    from biomatch.faces.lfw import default_pairs

    try:
        pairs = default_pairs()
    except NotFoundError:
        pytest.skip("lfw_pairs dataset not available")
    images = [Image.open(pairs.path(r)) for r in pairs.images[:12]]
    f = FaceEmbedder.default().embed(images)
    q = FaceEmbedder.default(int8=True).embed(images)
    assert (assets_dir() / INT8_MODEL).stat().st_size < 0.4 * (assets_dir() / FLOAT_MODEL).stat().st_size
    assert (f * q).sum(1).min() > 0.98
    # relative geometry is kept: pairwise similarity matrices agree
    assert np.abs(f @ f.T - q @ q.T).max() < 0.05


def test_errors(tmp_path, tiny):
    _, path, _, _ = tiny
    with pytest.raises(NotFoundError, match="not found"):
        OnnxEmbedder(tmp_path / "nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(InputError, match="cannot load ONNX"):
        OnnxEmbedder(corrupt)
    with pytest.raises(InputError, match="takes 64x64"):
        OnnxEmbedder(path, preprocess=Preprocess(size=(112, 112)))
    emb = OnnxEmbedder(path, preprocess=PREP64)
    with pytest.raises(InputError, match=r"shape \(N, 3, 64, 64\)"):
        emb.run(np.zeros((2, 3, 32, 32), np.float32))
    from PIL import Image

    with pytest.raises(InputError, match="smaller than"):
        emb.embed([Image.new("RGB", (8, 8))])
    with pytest.raises(InputError, match="calibration data"):
        quantize_static_int8(path, tmp_path / "x.onnx", np.zeros((0, 3, 64, 64), np.float32))
    assert emb.embed([]).shape == (0, 32)
