"""Pack what the GPU training run of issue #9 needs into one small file (it cannot read ../shared).

    python benchmarks/palmprint_gpu_export.py            # -> .gpu_palm/palm64.npz (~20 MB)

Holds the 64 x 64 ROIs (area-downsampled from the cached 128 px ROIs exactly as
``ccnet.prepare`` does, then stored as uint8) of every image a network trains on in the
closed and open protocols, plus the open protocol's validation palms 250-299 (for choosing
among training recipes), and the index lists of each split. No test image of either protocol
is in it except as a *training* image of the other protocol: the closed set trains on session 1
of palms 300-599, which are open-set gallery images (the open-set nets never see them).
Read back by scripts/gpu_palm_train.py; the trained weights come back through
benchmarks/palmprint_gpu_import.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from biomatch.palmprint.ccnet import resize_rois
from biomatch.palmprint.data import load_rois_cached, load_samples
from biomatch.palmprint.splits import indices_of, make_split, validation_split

SIZE = 64
OUT = Path(__file__).resolve().parent.parent / ".gpu_palm" / "palm64.npz"


def downsample_uint8(rois: np.ndarray, size: int = SIZE) -> np.ndarray:
    """(n, H, W) in [0, 1] -> (n, size, size) uint8, resized as ``ccnet.prepare`` resizes."""
    x = resize_rois(rois, size)
    return (x[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def export(out: Path = OUT) -> Path:
    samples = load_samples("tongji_full")
    rois = load_rois_cached(samples)
    closed, open_ = make_split(samples, "closed"), make_split(samples, "open")
    val = validation_split(samples)
    lists = {
        "closed_train": indices_of(closed.train, samples),
        "open_train": indices_of(open_.train, samples),
        "val_gallery": indices_of(val.gallery, samples),
        "val_probes": indices_of(val.probes, samples),
    }
    keep = np.unique(np.concatenate([np.asarray(v) for v in lists.values()]))
    pos = {int(i): j for j, i in enumerate(keep)}
    arrays = {k: np.array([pos[int(i)] for i in v], dtype=np.int32) for k, v in lists.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x=downsample_uint8(rois[keep]), palm=np.array([samples[i].palm for i in keep], dtype=np.int32),
                        session=np.array([samples[i].session for i in keep], dtype=np.int8), **arrays)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    path = export(args.out)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
