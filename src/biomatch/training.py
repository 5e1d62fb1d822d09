"""The training loop: progress bar (on a terminal; off in logs), validation each epoch, early stopping, checkpoint + resume,
seeded, CPU/CUDA, and DistributedDataParallel when launched by torchrun.

It is agnostic of what a batch holds: a Dataset yields (input, label, view) and a batch
sampler (PK, pairs) decides which rows form a batch; an objective turns embeddings into a loss.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from biomatch.errors import InputError


@dataclass
class TrainConfig:
    """Optimization settings (all defaults suit head training on cached features)."""

    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    warmup_epochs: int = 0
    cosine: bool = True
    patience: int = 0  # 0 = no early stopping; otherwise stop after this many epochs without gain
    monitor: str = "recall@1"
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    grad_clip: float = 0.0


@dataclass
class History:
    """Per-epoch training loss and validation metrics."""

    loss: list[float] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    stopped_early: bool = False


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` intra-op torch threads (None: leave as is). Float reductions are
    split by thread count, so a head trained on 1 thread and one trained on 2 end up different
    after a few hundred steps (R@1 differs by ~0.01-0.02 per split); pinning the count makes
    a seed's result the same on every machine size and in every entry point."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def init_distributed_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment (no-op otherwise)."""
    if "RANK" not in os.environ or is_distributed():
        return is_distributed()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    return True


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise InputError(f"unknown optimizer {cfg.optimizer!r}; use adamw, adam or sgd")


def _lr_factor(epoch: int, cfg: TrainConfig) -> float:
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    if not cfg.cosine:
        return 1.0
    span = max(1, cfg.epochs - cfg.warmup_epochs)
    return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(
    model: nn.Module,
    dataset: Dataset,
    batch_sampler: Sampler,
    objective: nn.Module,
    cfg: TrainConfig,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    extra_params: list[nn.Parameter] | None = None,
) -> History:
    """Train `model` in place; on return it holds the best validated weights (or the last).

    Each batch from `dataset` is (inputs, labels, views). With a `checkpoint` path the full
    state is written after every epoch; `resume=True` continues from it.
    """
    torch.manual_seed(cfg.seed)  # seeds torchvision augmentations; samplers carry their own seed
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but CUDA is not available here")
    model.to(device)
    objective.to(device)
    train_model: nn.Module = model
    if is_distributed():
        if hasattr(batch_sampler, "seed"):  # each rank draws its own batches
            batch_sampler.seed += 100_003 * rank()
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad] + list(objective.parameters()) + (extra_params or [])
    if not params:
        raise InputError("nothing to train: every parameter is frozen")
    opt = _make_optimizer(params, cfg)
    loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=cfg.num_workers)
    history, start, best_state = History(), 0, None
    base_lrs = [g["lr"] for g in opt.param_groups]  # before a restored state overwrites them
    if resume and checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        objective.load_state_dict(state["objective"])
        opt.load_state_dict(state["optimizer"])
        history = History(**state["history"])
        best_state, start = state["best_model"], state["epoch"] + 1
    bar = tqdm(range(start, cfg.epochs), desc="training", disable=True if not progress or rank() != 0 else None, leave=False)
    for epoch in bar:
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(epoch)
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * _lr_factor(epoch, cfg)
        train_model.train()
        total, batches = 0.0, 0
        for inputs, labels, views in loader:
            inputs, labels, views = inputs.to(device), labels.to(device), views.to(device)
            loss = objective(train_model(inputs), labels, views)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            total, batches = total + float(loss.detach()), batches + 1
        history.loss.append(total / max(batches, 1))
        postfix = {"loss": f"{history.loss[-1]:.4f}"}
        if validate is not None:
            model.eval()
            metrics = validate(model)
            history.val.append(metrics)
            score = metrics[cfg.monitor]
            postfix[cfg.monitor] = f"{score:.3f}"
            if score > history.best_score:
                history.best_score, history.best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(postfix)
        if progress and rank() == 0 and not sys.stderr.isatty() and (epoch + 1) % max(1, cfg.epochs // 4) == 0:
            # a piped log gets a plain line each quarter of the epochs instead of a progress bar
            print(f"  training: epoch {epoch + 1}/{cfg.epochs}, " + ", ".join(f"{k} {v}" for k, v in postfix.items()),
                  file=sys.stderr, flush=True)
        if checkpoint is not None and rank() == 0:
            _save_atomic({"model": model.state_dict(), "objective": objective.state_dict(),
                          "optimizer": opt.state_dict(), "history": asdict(history), "best_model": best_state,
                          "epoch": epoch, "config": asdict(cfg)}, checkpoint)
        if cfg.patience and validate is not None and epoch - history.best_epoch >= cfg.patience:
            history.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
