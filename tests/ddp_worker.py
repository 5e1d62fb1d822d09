"""Run by tests/test_training.py under `torchrun --nproc_per_node 2` (gloo, CPU)."""

from __future__ import annotations

import sys

import torch

from biomatch.data.samplers import PKSampler
from biomatch.objectives import make_objective
from biomatch.training import TrainConfig, fit, init_distributed_from_env, rank


def main(out_prefix: str) -> None:
    assert init_distributed_from_env("gloo")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(8).repeat_interleave(6)
    x = torch.randn(8, 16, generator=g)[labels] + 0.5 * torch.randn(48, 16, generator=g)
    dataset = list(zip(x, labels, torch.zeros(48, dtype=torch.long)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    history = fit(model, dataset, PKSampler(labels.tolist(), p=4, k=3, seed=0, batches_per_epoch=4),
                  make_objective("pml", loss="triplet", miner="batch_hard"), TrainConfig(epochs=5, lr=0.05),
                  progress=False)
    torch.save({"params": [p.detach() for p in model.parameters()], "loss": history.loss},
               f"{out_prefix}.{rank()}.pt")
    torch.distributed.barrier()  # neither rank may leave while the other is still in a collective
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
