"""Train CompNet-lite for issue #9 on a GPU machine from .gpu_palm/palm64.npz (no ../shared there).

    PYTHONPATH=src python3 scripts/gpu_palm_train.py --out $OUT --epochs 60,200 --budget-s 300

For every candidate recipe (here: a number of epochs; everything else is ccnet.TrainConfig's
default, as on the CPU) it trains one net per protocol, all in parallel processes on the one
GPU. The recipe is then chosen on the open protocol's **validation palms** (250-274 session 2
probes vs session 1 gallery; never trained on by the open-set nets, and not open-set test
palms), lowest EER, ties to fewer epochs — never on a test score. Only the chosen closed and
open nets come back (weights split in shards of < 16 MB, see benchmarks/palmprint_gpu_import.py),
with a JSON of every candidate's validation EER, loss history, device and times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from biomatch.metrics.verification import eer
from biomatch.palmprint.ccnet import CompNetMatcher, TrainConfig
from biomatch.palmprint.full import pair_arrays

SHARD_BYTES = 15_000_000


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_name() -> str:
    """What the results record as the training device."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def train_one(data: Path, protocol: str, epochs: int, budget_s: float, work: Path, seed: int, smoke: int = 0) -> None:
    """One process: fit on the protocol's training list; checkpoint at ``work``."""
    d = np.load(data)
    idx = d[f"{protocol}_train"]
    if smoke:  # a CPU smoke test of the whole flow: the first `smoke` training images only
        idx = idx[:smoke]
    x = d["x"][idx].astype(np.float32) / 255.0
    y = d["palm"][idx]
    cfg = TrainConfig(max_epochs=epochs, time_budget_s=budget_s, seed=seed, threads=2)
    torch.backends.cudnn.benchmark = True
    ckpt = work / f"{protocol}_e{epochs}.pt"
    log = work / f"{protocol}_e{epochs}.log"
    m = CompNetMatcher(config=cfg, checkpoint=ckpt, log=log, device=_device(), checkpoint_every=10)
    t = time.perf_counter()
    m.fit(x, y)
    meta = {"protocol": protocol, "epochs_asked": epochs, "epochs": len(m.history), "train_s": m.train_s,
            "wall_s": time.perf_counter() - t, "n_train": len(idx), "n_palms": len(set(y.tolist())),
            "device": _device_name(), "threads": cfg.threads,
            "history": m.history, "config": asdict(cfg)}
    (work / f"{protocol}_e{epochs}.json").write_text(json.dumps(meta) + "\n")


def validation_eer(data: Path, ckpt: Path) -> float:
    """EER of an open-protocol net on validation palms 250-274 (session 2 vs session 1)."""
    d = np.load(data)
    m = CompNetMatcher.load(ckpt)
    g, p = d["val_gallery"], d["val_probes"]
    eg, ep = m.encode(d["x"][g].astype(np.float32) / 255.0), m.encode(d["x"][p].astype(np.float32) / 255.0)
    return float(eer(*pair_arrays(m.dissimilarity(ep, eg), d["palm"][p], d["palm"][g])))


def save_shards(ckpt: Path, out: Path, name: str) -> list[str]:
    """The weights + metadata that ``CompNetMatcher.load`` needs, in files under SHARD_BYTES."""
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    slim = {k: state[k] for k in ("config", "history", "elapsed", "epoch", "n_classes")}
    shards: list[dict] = [{}]
    size = 0
    for k, v in state["model"].items():
        nbytes = v.numel() * v.element_size()
        if size + nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    names = []
    for i, part in enumerate(shards):
        path = out / f"{name}.part{i}.pt"
        torch.save({"meta": slim if i == 0 else None, "model": part, "n_parts": len(shards)}, path)
        names.append(path.name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(".gpu_palm/palm64.npz"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/palm_work"))
    parser.add_argument("--epochs", default="60,200", help="candidate recipes: max epochs, comma-separated")
    parser.add_argument("--budget-s", type=float, default=300.0, help="training wall-time cap of each net")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", type=int, default=0, help="train on this many images only (a CPU test of the flow)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "protocol:epochs", child process
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.one:
        protocol, epochs = args.one.split(":")
        train_one(args.data, protocol, int(epochs), args.budget_s, args.work, args.seed, args.smoke)
        return
    cands = [int(e) for e in args.epochs.split(",")]
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    procs = {(p, e): subprocess.Popen([sys.executable, __file__, "--data", str(args.data), "--out", str(args.out),
                                       "--work", str(args.work), "--budget-s", str(args.budget_s), "--seed", str(args.seed),
                                       "--smoke", str(args.smoke), "--one", f"{p}:{e}"], env=env)
             for e in cands for p in ("open", "closed")}
    failed = [k for k, pr in procs.items() if pr.wait() != 0]
    print(f"trained {len(procs) - len(failed)}/{len(procs)} nets in {time.perf_counter() - t0:.0f} s; failed: {failed}", flush=True)
    summary: dict = {"device": _device_name(),
                     "rule": "recipe (max epochs) with the lowest open-protocol validation EER (palms 250-274), ties -> fewer epochs",
                     "candidates": {}}
    for e in cands:
        rec = {}
        for p in ("open", "closed"):
            meta_path = args.work / f"{p}_e{e}.json"
            rec[p] = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if rec["open"] is not None:
            rec["validation_eer"] = validation_eer(args.data, args.work / f"open_e{e}.pt")
        summary["candidates"][str(e)] = rec
        print(f"epochs {e}: validation EER {rec.get('validation_eer')}", flush=True)
    scored = [(c["validation_eer"], int(e)) for e, c in summary["candidates"].items()
              if c.get("validation_eer") is not None and c.get("closed") is not None]
    if scored:
        chosen = min(scored)[1]
        summary["chosen_epochs"] = chosen
        args.out.mkdir(parents=True, exist_ok=True)
        summary["files"] = {p: save_shards(args.work / f"{p}_e{chosen}.pt", args.out, f"compnet_gpu_{p}") for p in ("closed", "open")}
    summary["total_s"] = time.perf_counter() - t0
    (args.out / "compnet_gpu_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "candidates"}), flush=True)


if __name__ == "__main__":
    main()
