"""Export what scripts/gpu_hands_finetune.py needs to finetune on a GPU machine without biomatch.

Writes one carry folder (default `.gpu_hands/`, git-ignored):
- images.npz: every 11k Hands image once, as the landmark-ALIGNED crop the best method reads
  (`biomatch.hands.landmarks.AlignedLoader`; the resized photo where no hand was found), JPEG q95
  at 224 px, concatenated bytes + offsets, in path order (as FeatureBank orders samples);
- lite0_stage5.pt: the EfficientNet-Lite0 ImageNet weights up to stage 5 (all the tap stages
  need) as a plain state_dict for the GPU script's vendored `Lite0Taps`;
- meta.json: file names, identities, views, landmark-found flags, and per split seed (tuning 0-4,
  report 10-19, `HandsSplit` exactly as benchmarks/hands_dorsal_palmar.py makes it) the training
  indices (train + val subjects, as the best method trains) with labels and views, and the test
  queries (dorsal) and gallery (palmar) in `HandsSplit.queries/gallery` order.

    python benchmarks/hands_finetune_export.py [--out .gpu_hands]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from biomatch.data.datasets import Sample
from biomatch.hands.landmarks import CROP, AlignedLoader, cached_landmarks
from biomatch.hands.protocol import (
    GALLERY_VIEW,
    QUERY_VIEW,
    REPORT_SEEDS,
    TUNING_SEEDS,
    HandsSplit,
    load_hands,
    make_split,
)
from biomatch.paths import REPO_ROOT

JPEG_QUALITY = 95
WEIGHTS_FILE = "lite0_stage5.pt"
LAST_BLOCK = 10  # Lite0 stage 5 ends at block 10 (stages of 1, 2, 2, 3, 3 blocks)


def split_record(split: HandsSplit, index: dict[Path, int]) -> dict:
    """Indices, labels and views of one split: train = train + val subjects (train_on_val)."""
    train = split.train + split.val
    ids = {ident: i for i, ident in enumerate(sorted({s.identity for s in train}))}
    queries, gallery = HandsSplit.queries(split.test), HandsSplit.gallery(split.test)
    return {"train": [index[s.path] for s in train], "train_labels": [ids[s.identity] for s in train],
            "train_views": [int(s.view != QUERY_VIEW) for s in train],
            "query": [index[s.path] for s in queries], "gallery": [index[s.path] for s in gallery],
            "query_labels": [s.identity for s in queries], "gallery_labels": [s.identity for s in gallery]}


def lite0_stage5_state() -> dict[str, torch.Tensor]:
    """biomatch's Lite0 body weights, stem + blocks 0..LAST_BLOCK (the taps' reach)."""
    from biomatch.models.backbones import create_backbone

    body = create_backbone("efficientnet_lite0").body
    keep = ("_conv_stem.", "_bn0.", *(f"_blocks.{i}." for i in range(LAST_BLOCK + 1)))
    return {k: v.clone() for k, v in body.state_dict().items() if k.startswith(keep)}


def encode_crops(samples: Sequence[Sample], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated JPEG bytes, offsets) of the aligned crops, in sample order."""
    loader = AlignedLoader(samples, points)
    chunks, offsets = [], [0]
    for i in range(len(samples)):
        buf = io.BytesIO()
        loader(i).save(buf, "JPEG", quality=JPEG_QUALITY)
        chunks.append(np.frombuffer(buf.getvalue(), np.uint8))
        offsets.append(offsets[-1] + len(chunks[-1]))
    return np.concatenate(chunks), np.array(offsets, np.int64)


def export(out: Path, seeds: Sequence[int], samples: Sequence[Sample] | None = None) -> dict:
    """Write the carry folder `out`; returns its meta record."""
    samples = samples if samples is not None else load_hands()
    ordered = sorted(samples, key=lambda s: str(s.path))
    if any(s.view not in (QUERY_VIEW, GALLERY_VIEW) for s in ordered):
        raise ValueError("only dorsal and palmar views are expected")
    index = {s.path: i for i, s in enumerate(ordered)}
    points, ok = cached_landmarks(ordered, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    blob, offsets = encode_crops(ordered, points)
    np.savez(out / "images.npz", jpeg=blob, offsets=offsets)
    torch.save(lite0_stage5_state(), out / WEIGHTS_FILE)
    splits = {str(seed): split_record(make_split(samples, seed), index) for seed in seeds}
    meta = {"names": [s.path.name for s in ordered], "identities": [s.identity for s in ordered],
            "views": [int(s.view != QUERY_VIEW) for s in ordered], "landmarks_ok": ok.astype(int).tolist(),
            "crop": {"size": CROP, "loader": repr(AlignedLoader(ordered, points)), "jpeg_quality": JPEG_QUALITY},
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": hashlib.sha256((out / WEIGHTS_FILE).read_bytes()).hexdigest()[:16],
            "seeds": list(seeds), "splits": splits}
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO_ROOT / ".gpu_hands"))
    parser.add_argument("--seeds", default=",".join(str(s) for s in [*TUNING_SEEDS, *REPORT_SEEDS]))
    args = parser.parse_args()
    out = Path(args.out)
    meta = export(out, [int(s) for s in args.seeds.split(",")])
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out}: {len(meta['names'])} crops, seeds {meta['seeds']}, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
