"""Bring the GPU-trained CompNet-lite nets (scripts/gpu_palm_train.py) into the evaluation's cache.

    python benchmarks/palmprint_gpu_import.py DIR     # DIR = the folder the GPU run's $OUT came back to

Writes ``$BIOMATCH_CACHE/palmprint/compnet_gpu_{closed,open}.pt`` (the format
``CompNetMatcher.load`` reads) and the training metadata beside them, so
``python benchmarks/palmprint_full.py --matchers compnet_gpu`` scores them like the CPU nets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from biomatch.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from palmprint_train import checkpoint_path

KEY = "compnet_gpu"


def merge_shards(files: list[Path]) -> dict:
    """One ``fit``-style checkpoint from the shards ``save_shards`` wrote (meta in shard 0)."""
    parts = [torch.load(f, weights_only=False, map_location="cpu") for f in sorted(files)]
    if not parts or parts[0]["meta"] is None or len(parts) != parts[0]["n_parts"]:
        raise InputError(f"incomplete shard set: {[str(f) for f in files]}")
    model: dict = {}
    for p in parts:
        model.update(p["model"])
    return {**parts[0]["meta"], "model": model}


def import_run(src: Path) -> list[Path]:
    summary_path = src / f"{KEY}_summary.json"
    if not summary_path.is_file():
        raise InputError(f"{summary_path} not found: is {src} the GPU run's output folder?")
    summary = json.loads(summary_path.read_text())
    if "chosen_epochs" not in summary:
        raise InputError(f"{summary_path}: the GPU run chose no recipe (a training failed?)")
    chosen = summary["candidates"][str(summary["chosen_epochs"])]
    written = []
    for protocol in ("closed", "open"):
        state = merge_shards([src / f for f in summary["files"][protocol]])
        ckpt = checkpoint_path(protocol, KEY)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, ckpt)
        train = chosen[protocol]
        meta = {"protocol": protocol, "model": KEY, "n_train": train["n_train"], "n_palms": train["n_palms"],
                "train_s": train["train_s"], "wall_s": train["wall_s"], "device": train["device"], "threads": train["threads"],
                "epochs": train["epochs"], "history": train["history"], "config": train["config"],
                "recipe_choice": {"rule": summary["rule"], "chosen_max_epochs": summary["chosen_epochs"],
                                  "validation_eer_by_max_epochs": {e: c.get("validation_eer") for e, c in summary["candidates"].items()}}}
        ckpt.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
        written.append(ckpt)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src", type=Path)
    args = parser.parse_args()
    for path in import_run(args.src):
        print(path)


if __name__ == "__main__":
    main()
