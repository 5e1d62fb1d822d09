"""ONNX export, int8 quantization and a generic onnxruntime embedder.

Any torch embedder (an ``nn.Module`` mapping (N, 3, H, W) float images to (N, D) features)
can be exported with a dynamic batch axis, then quantized to int8 either statically (QDQ,
activation ranges calibrated on a few real images; fast on CPU) or dynamically (weights
only; no calibration data, but on this 2-core CPU it ran far slower than float for convs).
``OnnxEmbedder`` runs any such file with a preprocessing config, so the same class serves the
vendored MobileFaceNet, its int8 copy and anything ``biomatch export`` writes.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from biomatch.errors import InputError, NotFoundError
from biomatch.models.embedder import l2_normalize, sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_IMAGE_SIDE = 16  # smaller inputs carry no usable identity; refuse instead of upscaling noise


@dataclass(frozen=True)
class Preprocess:
    """How a PIL image becomes a model input row.

    ``crop`` is an optional box (left, top, right, bottom) in fractions of the image size,
    applied before resizing: it lets a model trained on tight crops run on looser ones.
    With ``flip_tta`` the embedding is the normalized sum of the image's and its mirror's.
    """

    size: tuple[int, int] = (112, 112)  # (height, width)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    flip_tta: bool = True
    crop: tuple[float, float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored beside calibrated thresholds)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def array(self, image: Image.Image, name: str = "image") -> np.ndarray:
        """One image as a (3, H, W) float32 normalized array."""
        if not isinstance(image, Image.Image):
            raise InputError(f"{name}: expected a PIL image, got {type(image).__name__}")
        if min(image.size) < MIN_IMAGE_SIDE:
            raise InputError(
                f"{name}: image is {image.size[0]}x{image.size[1]} px, smaller than {MIN_IMAGE_SIDE} px"
            )
        img = image.convert("RGB")
        if self.crop is not None:
            w, h = img.size
            l, t, r, b = self.crop
            img = img.crop((round(l * w), round(t * h), round(r * w), round(b * h)))
        height, width = self.size
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images as an (N, 3, H, W) float32 array."""
        h, w = self.size
        if not images:
            return np.zeros((0, 3, h, w), np.float32)
        return np.stack([self.array(im, f"image {i}") for i, im in enumerate(images)])


# --------------------------------------------------------------------------- ONNX graph helpers


def _load_onnx(path: str | Path) -> Any:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"cannot load ONNX model {path}: {exc}") from exc


def make_batch_dynamic(model: Any, dim_name: str = "batch") -> Any:
    """A copy of an ONNX model whose batch axis (dim 0 of inputs and outputs) is symbolic.

    Exporters often bake ``batch = 1`` into the graph, including a final ``Reshape`` to
    ``[1, -1]``; such reshape targets become ``[0, -1]`` (0 = keep the input's dim 0).
    The result must be checked against the original (tests do, on real weights).
    """
    from onnx import numpy_helper

    m = copy.deepcopy(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = dim_name
    del m.graph.value_info[:]  # stale static shapes would contradict the symbolic batch
    reshape_shapes = {n.input[1] for n in m.graph.node if n.op_type == "Reshape"}
    allowzero = {
        n.input[1]: any(a.name == "allowzero" and a.i for a in n.attribute)
        for n in m.graph.node
        if n.op_type == "Reshape"
    }
    for node in m.graph.node:
        if node.op_type == "Constant" and node.output[0] in reshape_shapes:
            for attr in node.attribute:
                if attr.name == "value":
                    shape = numpy_helper.to_array(attr.t).copy()
                    if shape.ndim == 1 and shape.size and shape[0] == 1 and not allowzero[node.output[0]]:
                        shape[0] = 0
                        attr.t.CopyFrom(numpy_helper.from_array(shape, attr.t.name))
    for init in m.graph.initializer:
        if init.name in reshape_shapes and not allowzero[init.name]:
            shape = numpy_helper.to_array(init).copy()
            if shape.ndim == 1 and shape.size and shape[0] == 1:
                shape[0] = 0
                init.CopyFrom(numpy_helper.from_array(shape, init.name))
    return m


def _has_fixed_batch(model: Any) -> bool:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return bool(dims) and dims[0].HasField("dim_value")


def _atomic_save(model: Any, path: str | Path) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- export


def export_onnx(
    module: Any,
    path: str | Path,
    input_size: tuple[int, int],
    *,
    opset: int = 17,
    input_name: str = "input",
    output_name: str = "embedding",
) -> Path:
    """Export a torch embedder to ONNX with a dynamic batch axis.

    The module is put in eval mode; its raw output is exported (no L2 normalization in the
    graph, so quantization error is not hidden and ``OnnxEmbedder`` normalizes).
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    device = next(iter(module.parameters()), torch.empty(0)).device
    dummy = torch.zeros(2, 3, *input_size, device=device)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter is deprecated but needs no onnxscript and handles dynamic axes
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                (dummy,),
                str(tmp),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        module.train(was_training)
    # A single self-contained file: fold any external-data side file back in.
    model = _load_onnx(tmp)
    data_file = tmp.with_name(tmp.name + ".data")
    tmp.unlink()
    if data_file.exists():
        data_file.unlink()
    return _atomic_save(model, path)


class ArrayCalibrationReader:
    """onnxruntime CalibrationDataReader over preprocessed (N, 3, H, W) batches."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.input_name = input_name
        self._batches: Iterator[np.ndarray] = iter(list(batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: np.asarray(batch, np.float32)}

    def rewind(self) -> None:  # pragma: no cover - onnxruntime calls it only for some methods
        pass


def _float_model_for_quantization(src: str | Path, workdir: Path) -> Path:
    """Batch made dynamic and shapes inferred: what the quantizer wants as input."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = _load_onnx(src)
    if _has_fixed_batch(model):
        model = make_batch_dynamic(model)
    plain = _atomic_save(model, workdir / "float.onnx")
    prepped = workdir / "float.pre.onnx"
    quant_pre_process(str(plain), str(prepped), skip_symbolic_shape=True)
    return prepped


INT8_WEIGHTS = ("int8_7bit", "int8", "uint8")  # weight layouts of quantize_static_int8


def quantize_static_int8(
    src: str | Path,
    dst: str | Path,
    calibration: Sequence[np.ndarray] | np.ndarray,
    *,
    per_channel: bool = True,
    batch_size: int = 16,
    weights: str = "int8_7bit",
) -> Path:
    """Static 8-bit QDQ quantization; ``calibration`` are preprocessed (N, 3, H, W) inputs.

    Activations are uint8; ranges are MinMax over the calibration images, ~100 real images
    suffice. ``weights`` (one of `INT8_WEIGHTS`) picks the weight layout:
    - ``"int8"``: the fastest on CPUs with VNNI, but on x86 CPUs without it (AVX2) the
      uint8×int8 kernels add pairs of products in 16 bits, which saturate (onnxruntime's
      quantization guide);
    - ``"int8_7bit"`` (default): int8 weights in 7 bits (onnxruntime's ``reduce_range``), so the
      pairs cannot saturate;
    - ``"uint8"``: no saturation either, but slow kernels for some graphs on AVX2.
    Measured on an AVX2 VM, 1 thread (speed on VNNI CPUs not measured here):
    - the vendored face model: embeddings down to cosine 0.941 of the float ones with int8,
      0.981 with int8_7bit, 0.987 with uint8 (60 LFW faces); 188 images/s with int8_7bit, 138
      with uint8, 98 for float;
    - the hands EfficientNet-Lite0 model (benchmarks/hands_int8.py, 5 split seeds): R@1 0.225
      with int8, 0.290 with int8_7bit, 0.287 with uint8 against 0.307 for float; 108, 109 and 13
      images/s against 75 for float.
    """
    if weights not in INT8_WEIGHTS:
        raise InputError(f"int8 weights must be one of {', '.join(INT8_WEIGHTS)}, got {weights!r}")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calib = np.concatenate(list(calibration)) if not isinstance(calibration, np.ndarray) else calibration
    if calib.ndim != 4 or len(calib) == 0:
        raise InputError(f"calibration data must be a non-empty (N, 3, H, W) array, got shape {calib.shape}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        prepped = _float_model_for_quantization(src, Path(tmpdir))
        input_name = _load_onnx(prepped).graph.input[0].name
        reader = ArrayCalibrationReader(
            input_name, (calib[i : i + batch_size] for i in range(0, len(calib), batch_size))
        )
        out = Path(tmpdir) / "int8.onnx"
        quantize_static(
            str(prepped),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if weights == "uint8" else QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=weights == "int8_7bit",
            calibrate_method=CalibrationMethod.MinMax,
        )
        return _atomic_save(_load_onnx(out), dst)


def quantize_dynamic_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 (weights int8, activations quantized on the fly); no calibration data."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        prepped = _float_model_for_quantization(src, Path(tmpdir))
        out = Path(tmpdir) / "int8.onnx"
        quantize_dynamic(str(prepped), str(out), weight_type=QuantType.QInt8)
        return _atomic_save(_load_onnx(out), dst)


# --------------------------------------------------------------------------- inference


@dataclass
class OnnxEmbedder:
    """Runs an embedding ONNX model with onnxruntime; implements the Embedder protocol.

    A model whose batch axis is fixed at 1 is patched in memory (``make_batch_dynamic``) so
    images run in batches; ``model_hash`` is still the SHA-256 of the file on disk.
    """

    model_path: Path
    name: str = ""
    preprocess: Preprocess = field(default_factory=Preprocess)
    threads: int = 1
    batch_size: int = 32

    def __post_init__(self) -> None:
        import onnxruntime as ort

        self.model_path = Path(self.model_path)
        model = _load_onnx(self.model_path)
        if _has_fixed_batch(model):
            model = make_batch_dynamic(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise InputError(f"onnxruntime cannot run {self.model_path}: {exc}") from exc
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        expected = tuple(inp.shape[2:])
        if all(isinstance(d, int) for d in expected) and expected != tuple(self.preprocess.size):
            raise InputError(
                f"{self.model_path.name} takes {expected[0]}x{expected[1]} inputs but the "
                f"preprocessing makes {self.preprocess.size[0]}x{self.preprocess.size[1]}"
            )
        out_shape = self._session.get_outputs()[0].shape
        self.dim = int(out_shape[-1])
        self.name = self.name or self.model_path.stem
        self._hash: str | None = None

    @property
    def model_hash(self) -> str:
        """SHA-256 of the ONNX file (computed once)."""
        if self._hash is None:
            self._hash = sha256_file(self.model_path)
        return self._hash

    def run(self, x: np.ndarray) -> np.ndarray:
        """Raw model outputs for preprocessed (N, 3, H, W) inputs, in batches; no TTA, no norm."""
        x = np.asarray(x, dtype=np.float32)
        h, w = self.preprocess.size
        if x.ndim != 4 or x.shape[1:] != (3, h, w):
            raise InputError(f"expected inputs of shape (N, 3, {h}, {w}), got {x.shape}")
        outs = [
            self._session.run(None, {self._input_name: x[i : i + self.batch_size]})[0]
            for i in range(0, len(x), self.batch_size)
        ]
        return np.concatenate(outs).reshape(len(x), -1) if outs else np.zeros((0, self.dim), np.float32)

    def embed_arrays(self, x: np.ndarray) -> np.ndarray:
        """L2-normalized embeddings of preprocessed inputs, flip-averaged when configured."""
        emb = l2_normalize(self.run(x))
        if self.preprocess.flip_tta and len(x):
            emb = l2_normalize(emb + l2_normalize(self.run(np.ascontiguousarray(x[..., ::-1]))))
        return emb.astype(np.float32)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, dim) float32 L2-normalized embeddings of PIL images."""
        return self.embed_arrays(self.preprocess.batch(images))
