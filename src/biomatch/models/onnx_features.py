"""Frozen feature extractors run by ONNX Runtime on the CPU.

Why: the frozen EfficientNet-Lite passes are most of a cold hands run on a 2-core CPU. ONNX
Runtime runs them about 3× faster than eager PyTorch (Lite2 stage taps, 64 images at 260 px:
1.1 s against 3.3 s), and its outputs do not depend on the batch size or the thread count, so the
cached features, the demo and the benchmark agree on any machine. Its features differ from
PyTorch's by ~2e-7; the runtime joins the feature-cache key (through `weights_id`), so features of
the two runtimes never mix. `BIOMATCH_FEATURE_RUNTIME=torch` brings back the PyTorch path (the one
every hands result before this module was measured with).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from biomatch.errors import InputError

FEATURE_RUNTIME_ENV = "BIOMATCH_FEATURE_RUNTIME"
RUNTIMES = ("onnxruntime", "torch")


def feature_runtime(device: str | torch.device = "cpu") -> str:
    """The runtime frozen features are computed with: ONNX Runtime on the CPU unless
    $BIOMATCH_FEATURE_RUNTIME says "torch"; always PyTorch on a GPU."""
    wanted = os.environ.get(FEATURE_RUNTIME_ENV, "onnxruntime").strip().lower() or "onnxruntime"
    if wanted not in RUNTIMES:
        raise InputError(f"${FEATURE_RUNTIME_ENV} must be one of {', '.join(RUNTIMES)}, got {wanted!r}")
    return wanted if torch.device(device).type == "cpu" else "torch"


class OrtFeatures(nn.Module):
    """`module` (a frozen extractor: image batch → feature rows) exported to ONNX on its first
    call and run by ONNX Runtime. Keeps the module's `weights_id` (+ the runtime), `mean`, `std`
    and `input_size`, so it stands in wherever the module did."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        import onnxruntime

        self.module = module.eval()
        self.weights_id = f"{getattr(module, 'weights_id', 'unknown')}+onnxruntime-{onnxruntime.__version__}"
        for attr in ("mean", "std", "input_size"):
            if hasattr(module, attr):
                setattr(self, attr, getattr(module, attr))
        self._sessions: dict[tuple[int, int], object] = {}
        self.threads: int | None = None  # intra-op threads of sessions made from now on (None: torch's count)

    def prepare(self, size: tuple[int, int]) -> None:
        """Export and load the session for images of `size` (H, W) now, e.g. before running
        several extractors side by side in threads (the ONNX export is not thread-safe)."""
        self._session(tuple(size))

    def _session(self, size: tuple[int, int]):
        """One inference session per image size (H, W); the batch size is free."""
        if size not in self._sessions:
            import onnxruntime

            from biomatch.export import export_onnx

            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's notes on constant folding, not errors
                path = export_onnx(self.module, Path(tmp) / "features.onnx", size, input_name="images",
                                   output_name="features")
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = self.threads or torch.get_num_threads()
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # yield the CPU when idle
                self._sessions[size] = onnxruntime.InferenceSession(str(path), options,
                                                                    providers=["CPUExecutionProvider"])
        return self._sessions[size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected an RGB image batch (N, 3, H, W), got shape {tuple(x.shape)}")
        images = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self._session(images.shape[2:]).run(None, {"images": images})
        return torch.from_numpy(out)


def on_runtime(module: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """`module` as it runs on `device`: wrapped in `OrtFeatures` where ONNX Runtime is the
    feature runtime, else unchanged."""
    return OrtFeatures(module) if feature_runtime(device) == "onnxruntime" else module
