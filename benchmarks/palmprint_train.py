"""Train the learned palmprint matchers of issue #9 on a TongjiFull protocol's training split.

    nice -n 5 python benchmarks/palmprint_train.py --protocol closed --model compnet --budget-s 1500 --threads 1

Time-bounded (``--budget-s`` of training-loop wall time), checkpointed after every epoch under
``$BIOMATCH_CACHE/palmprint/`` (rerunning resumes), progress appended to the log file.
The evaluation (benchmarks/palmprint_full.py) loads the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from biomatch.palmprint.data import load_rois_cached, load_samples, palm_labels
from biomatch.palmprint.splits import PROTOCOLS, indices_of, make_split
from biomatch.paths import cache_dir


def checkpoint_path(protocol: str, model: str) -> Path:
    """Where the evaluation looks for a trained matcher."""
    return cache_dir() / "palmprint" / f"{model}_{protocol}.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--protocol", choices=PROTOCOLS, required=True)
    parser.add_argument("--model", choices=["compnet", "palmnet"], default="compnet")
    parser.add_argument("--budget-s", type=float, default=1500.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20, help="palmnet: epochs of its cosine schedule")
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samples = load_samples("tongji_full")
    rois = load_rois_cached(samples)
    split = make_split(samples, args.protocol)
    idx = indices_of(split.train, samples)
    x, y = rois[idx], palm_labels(split.train)
    ckpt = checkpoint_path(args.protocol, args.model)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.model == "compnet":
        from biomatch.palmprint.ccnet import CompNetMatcher, TrainConfig

        cfg = TrainConfig(time_budget_s=args.budget_s, seed=args.seed, threads=args.threads)
        matcher = CompNetMatcher(config=cfg, checkpoint=ckpt, log=args.log)
        matcher.fit(x, y)
        history, train_s = matcher.history, matcher.train_s
    else:
        from biomatch.palmprint.learned import LearnedMatcher

        matcher = LearnedMatcher(seed=args.seed, epochs=args.epochs, time_budget_s=args.budget_s, checkpoint=ckpt, log=args.log)
        matcher.fit(x, y)
        history, train_s = matcher.history, matcher.train_s
    meta = {"protocol": args.protocol, "model": args.model, "n_train": int(len(idx)), "n_palms": int(len(set(y.tolist()))),
            "train_s": train_s, "wall_s": time.perf_counter() - t0, "device": "cpu", "threads": args.threads,
            "epochs": len(history), "load": os.getloadavg(), "history": history}
    ckpt.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "history"}), flush=True)


if __name__ == "__main__":
    main()
