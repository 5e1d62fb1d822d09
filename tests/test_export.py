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


def weights_of(model_path) -> tuple[set[int], int]:
    """(zero-point types, largest |quantized value|) of the conv/matmul weights."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    inits = {i.name: i for i in graph.initializer}
    conv_weights = {n.input[1] for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    # the DequantizeLinear nodes that feed a conv/matmul weight
    feeds = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights
             and len(n.input) > 2]
    types = {inits[n.input[2]].data_type for n in feeds}

    def spread(node) -> int:
        q = numpy_helper.to_array(inits[node.input[0]]).astype(np.int64)
        zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.int64)
        if zero.ndim:  # per channel, along the node's axis (ONNX default 1)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
            zero = zero.reshape([-1 if d == axis else 1 for d in range(q.ndim)])
        return int(np.abs(q - zero).max())

    return types, max(spread(n) for n in feeds)


def test_static_int8_weight_layout(tiny, tmp_path):
    """7-bit int8 weights by default (no 16-bit saturation on CPUs without VNNI), full int8 or
    uint8 when asked; the vendored face model is the uint8-weight kind."""
    import onnx

    _, path, x, _ = tiny

    default = weights_of(quantize_static_int8(path, tmp_path / "d.onnx", x))
    full = weights_of(quantize_static_int8(path, tmp_path / "s.onnx", x, weights="int8"))
    unsigned = weights_of(quantize_static_int8(path, tmp_path / "u.onnx", x, weights="uint8"))
    assert default[0] == full[0] == {onnx.TensorProto.INT8} and unsigned[0] == {onnx.TensorProto.UINT8}
    assert default[1] <= 64 < full[1] <= 127  # 7 bits: symmetric per channel within ±64
    assert weights_of(assets_dir() / INT8_MODEL)[0] == {onnx.TensorProto.UINT8}
    with pytest.raises(InputError, match="int8 weights must be one of"):
        quantize_static_int8(path, tmp_path / "x.onnx", x, weights="int4")


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


def test_export_command_picks_the_weight_layout(tiny, tmp_path, run_cli):
    """`biomatch export --quantize static`: 7-bit int8 weights unless told otherwise; bad names are refused."""
    import onnx
    from PIL import Image

    _, path, _, _ = tiny
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    common = ["--quantize", "static", "--calib-dir", str(calib), "--calib-count", "4", "--preset", "imagenet",
              "--input-size", "64"]
    code, _, err = run_cli("export", str(path), "--out", str(tmp_path / "d.onnx"), *common)
    assert code == 0, err
    types, spread = weights_of(tmp_path / "d.onnx")
    assert types == {onnx.TensorProto.INT8} and spread <= 64
    code, _, err = run_cli("export", str(path), "--out", str(tmp_path / "u.onnx"), *common, "--int8-weights", "uint8")
    assert code == 0, err
    assert weights_of(tmp_path / "u.onnx")[0] == {onnx.TensorProto.UINT8}
    code, out, err = run_cli("export", str(path), "--out", str(tmp_path / "x.onnx"), *common, "--int8-weights", "int4")
    assert code != 0 and "int8 weights must be one of" in out + err
    assert not (tmp_path / "x.onnx").exists()
