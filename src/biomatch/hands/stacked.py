"""Train many projection heads on cached features at once, as one batched ("stacked") model.

Why: method (d) trains 5 heads per backbone block (10–15 small MLPs) for a fixed budget; on a
shared 2-core CPU each step is dominated by Python and per-tensor overhead, not arithmetic.
Stacking the heads' weights as (H, d_in, d_out) tensors and running every head's own batch with
one `bmm` gives the same training as `biomatch.training.fit` head by head — the same initial
weights, the same batches (each head keeps its own seeded sampler), per-head BatchNorm, the
same AdamW and cosine schedule, and losses that only touch their own head's weights — at a
fraction of the time. Blocks of different input widths are zero-padded to the widest: padded
inputs are 0, so padded weights get no gradient and never change any output.

Only for heads `Linear → BN → ReLU → Linear` (ProjectionHead with two layers, no dropout) fed
without flip augmentation and without per-epoch validation; `run_method` falls back to `fit`
otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biomatch.models.heads import ProjectionHead
from biomatch.training import History, TrainConfig, _lr_factor


GROUPABLE_HIDDEN = 32  # hidden widths whose heads can be split into groups bit-identically (see below)


def stackable(heads: Sequence[nn.Module]) -> bool:
    """Whether `fit_stacked` can train these heads (two-layer ProjectionHeads, no dropout)."""
    if not heads or not all(isinstance(h, ProjectionHead) and len(h.dims) == 3 and len(h.net) == 4 for h in heads):
        return False
    return len({tuple(h.dims[1:]) for h in heads}) == 1 and len({h.normalize for h in heads}) == 1


def fit_stacked(heads: Sequence[ProjectionHead], inputs: Sequence[torch.Tensor], samplers: Sequence,
                labels: torch.Tensor, views: torch.Tensor, objective: nn.Module, cfg: TrainConfig,
                progress: Callable[[str], None] | None = None, pad_to: int | None = None,
                what: str = "", input_dropout: float = 0.0, seeds: Sequence[int] | None = None) -> list[History]:
    """Train `heads[h]` on `inputs[h]` (N, d_h) with batches from `samplers[h]`, all at once; the
    trained weights (and BatchNorm statistics) are written back into the heads. Inputs are
    zero-padded to `pad_to` (default: the widest input). `what` names the heads in progress lines.
    With `input_dropout`, each head's batch loses that share of its input features every step
    (inverted dropout; head h's masks come from its own generator seeded by `seeds[h]`, so a
    head's training does not depend on which other heads share its stack)."""
    n_heads = len(heads)
    if not 0.0 <= input_dropout < 1.0:
        raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout}")
    if input_dropout and (seeds is None or len(seeds) != n_heads):
        raise ValueError("input_dropout needs one seed per head")
    masks = [torch.Generator().manual_seed(int(s)) for s in seeds] if input_dropout and seeds is not None else []
    d_in = max([x.shape[1] for x in inputs] + [pad_to or 0])
    hidden, out = heads[0].dims[1], heads[0].dims[2]
    x_all = torch.zeros(n_heads, inputs[0].shape[0], d_in)
    for h, x in enumerate(inputs):
        x_all[h, :, : x.shape[1]] = x
    w1 = torch.zeros(n_heads, d_in, hidden)
    b1, w2, b2 = torch.zeros(n_heads, hidden), torch.zeros(n_heads, hidden, out), torch.zeros(n_heads, out)
    bn = nn.BatchNorm1d(n_heads * hidden)
    with torch.no_grad():
        for h, head in enumerate(heads):
            lin1, norm, _, lin2 = head.net
            w1[h, : lin1.in_features] = lin1.weight.T
            b1[h], w2[h], b2[h] = lin1.bias, lin2.weight.T, lin2.bias
            sl = slice(h * hidden, (h + 1) * hidden)
            bn.weight[sl], bn.bias[sl] = norm.weight, norm.bias
            bn.running_mean[sl], bn.running_var[sl] = norm.running_mean, norm.running_var
            bn.momentum, bn.eps = norm.momentum, norm.eps
    params = [nn.Parameter(t) for t in (w1, b1, w2, b2)]
    # fused: torch's one-pass AdamW kernel. The step over the stacked weights (tens of MB) walks them
    # once instead of seven times: 11 ms instead of 40 ms per step for 25 heads of 560→512→128 in
    # each of two threads. Same algorithm, other rounding: the heads differ from the single-tensor
    # AdamW's in the last bits, which batch-hard mining then amplifies (rows before 2026-11-28 used
    # foreach=True, bit-identical to the single-tensor AdamW).
    opt = torch.optim.AdamW(params + list(bn.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    base_lr = cfg.lr
    histories = [History() for _ in heads]
    normalize = heads[0].normalize
    batched = _batched_objective(objective)
    start = time.perf_counter()
    bn.train()
    for epoch in range(cfg.epochs):
        for s in samplers:
            s.set_epoch(epoch)
        for group in opt.param_groups:
            group["lr"] = base_lr * _lr_factor(epoch, cfg)
        totals = np.zeros(n_heads)
        steps = 0
        for batches in zip(*samplers):
            idx = torch.as_tensor(np.asarray(batches))  # (H, B)
            xb = torch.gather(x_all, 1, idx[:, :, None].expand(-1, -1, d_in))
            if masks:
                xb = xb * dropout_keep(masks, xb.shape[1:], input_dropout) / (1.0 - input_dropout)
            z = torch.baddbmm(params[1][:, None, :], xb, params[0])  # (H, B, hidden)
            bsz = z.shape[1]
            z = F.relu(bn(z.permute(1, 0, 2).reshape(bsz, n_heads * hidden))).reshape(bsz, n_heads, hidden)
            z = torch.baddbmm(params[3][:, None, :], z.permute(1, 0, 2), params[2])  # (H, B, out)
            if normalize:
                z = F.normalize(z, dim=-1)
            if batched is not None:
                losses = batched(z, labels[idx], views[idx])
            else:
                losses = torch.stack([objective(z[h], labels[idx[h]], views[idx[h]]) for h in range(n_heads)])
            loss = losses.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            totals += [float(v.detach()) for v in losses]
            steps += 1
        for h in range(n_heads):
            histories[h].loss.append(float(totals[h] / max(steps, 1)))
        if progress and (epoch + 1) % max(1, cfg.epochs // 4) == 0:
            progress(f"  training {what or f'{n_heads} heads'}: epoch {epoch + 1}/{cfg.epochs}, mean loss "
                     f"{totals.mean() / max(steps, 1):.4f} ({time.perf_counter() - start:.0f} s)")
    with torch.no_grad():
        for h, head in enumerate(heads):
            lin1, norm, _, lin2 = head.net
            lin1.weight.copy_(params[0][h, : lin1.in_features].T)
            lin1.bias.copy_(params[1][h])
            lin2.weight.copy_(params[2][h].T)
            lin2.bias.copy_(params[3][h])
            sl = slice(h * hidden, (h + 1) * hidden)
            norm.weight.copy_(bn.weight[sl])
            norm.bias.copy_(bn.bias[sl])
            norm.running_mean.copy_(bn.running_mean[sl])
            norm.running_var.copy_(bn.running_var[sl])
            norm.num_batches_tracked.copy_(bn.num_batches_tracked)
    return histories


def dropout_keep(generators: Sequence[torch.Generator], shape: Sequence[int], rate: float) -> torch.Tensor:
    """Which inputs a dropout step keeps: one boolean (shape) slice per head, from that head's own
    generator, each entry False with probability `rate` (the trainer scales the kept ones by
    1 / (1 − rate), so an input's expected value is unchanged).

    >>> g = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    >>> keep = dropout_keep(g, (1000, 50), 0.2)
    >>> keep.shape, keep.dtype, bool(abs((~keep).float().mean() - 0.2) < 0.01)
    (torch.Size([2, 1000, 50]), torch.bool, True)
    >>> bool(torch.equal(keep[1], dropout_keep([torch.Generator().manual_seed(1)], (1000, 50), 0.2)[0]))
    True
    """
    return torch.stack([torch.rand(tuple(shape), generator=g) >= rate for g in generators])


def fit_stacked_parallel(heads: Sequence[ProjectionHead], inputs: Sequence[torch.Tensor], samplers: Sequence,
                         labels: torch.Tensor, views: torch.Tensor, objective: nn.Module, cfg: TrainConfig,
                         workers: int, progress: Callable[[str], None] | None = None,
                         input_dropout: float = 0.0, seeds: Sequence[int] | None = None) -> list[History]:
    """`fit_stacked` with the heads split into `workers` groups trained in parallel threads.

    Why: head training runs on one intra-op thread (so a result does not depend on the core
    count), which leaves the other cores idle. Heads never interact, and with one thread and one
    common padding a head's arithmetic is the same whatever else is in its stack, so the trained
    weights are bit-identical for any number of workers (tests/test_hands_stacked.py checks it).
    Torch kernels release the GIL, so the groups really run at the same time.

    That holds when the hidden width is a multiple of `GROUPABLE_HIDDEN` (measured with 7 toy heads:
    hidden 32, 64, 96, 128, 160, 256, 512 gave bit-identical weights for 1 and 2 workers with any
    output width; 16, 20, 48, 80 did not). Element-wise kernels run whole SIMD blocks plus a
    remainder that can round differently (seen for torch's AdamW on tensors that are not whole
    blocks), so a head whose slice of the stacked channels straddles a block edge in one grouping
    and not in another trains differently. Such heads train as one stack, whatever `workers` says."""
    if heads[0].dims[1] % GROUPABLE_HIDDEN:
        workers = 1
    groups = [list(range(len(heads)))[g::workers] for g in range(max(1, min(workers, len(heads))))]
    if len(groups) == 1:
        return fit_stacked(heads, inputs, samplers, labels, views, objective, cfg, progress,
                           input_dropout=input_dropout, seeds=seeds)
    from concurrent.futures import ThreadPoolExecutor

    pad = max(x.shape[1] for x in inputs)

    def run(group: list[int], loud: bool) -> list[History]:
        return fit_stacked([heads[h] for h in group], [inputs[h] for h in group], [samplers[h] for h in group],
                           labels, views, objective, cfg, progress if loud else None, pad_to=pad,
                           what=f"{len(heads)} heads in {len(groups)} threads (loss: the first {len(groups[0])})",
                           input_dropout=input_dropout, seeds=None if seeds is None else [seeds[h] for h in group])

    with ThreadPoolExecutor(len(groups)) as pool:
        done = list(pool.map(run, groups, [g == 0 for g in range(len(groups))]))
    out: list[History | None] = [None] * len(heads)
    for group, hist in zip(groups, done):
        for h, history in zip(group, hist):
            out[h] = history
    return [h for h in out if h is not None]


def _batched_objective(objective: nn.Module) -> Callable | None:
    """The cross-view batch-hard loss of every head in one go (same value as calling
    `objective` head by head), or None for other objectives."""
    from biomatch.objectives import CrossViewObjective, CrossViewSoftmaxObjective

    if isinstance(objective, CrossViewSoftmaxObjective):
        return objective.batched
    if not isinstance(objective, CrossViewObjective) or objective.soft:
        return None

    def one_side(d: torch.Tensor, same: torch.Tensor, anchor: torch.Tensor, margin: float) -> torch.Tensor:
        other = ~anchor  # (H, B): candidates are the other view
        pos_mask = same & other[:, None, :]
        neg_mask = ~same & other[:, None, :]
        hardest_pos = torch.where(pos_mask, d, torch.full_like(d, -torch.inf)).amax(2)
        hardest_neg = torch.where(neg_mask, d, torch.full_like(d, torch.inf)).amin(2)
        valid = anchor & pos_mask.any(2) & neg_mask.any(2)  # (H, B)
        gap = torch.where(valid, torch.clamp(hardest_pos - hardest_neg + margin, min=0), torch.zeros_like(d[..., 0]))
        count = valid.sum(1)
        return torch.where(count > 0, gap.sum(1) / count.clamp(min=1), gap.sum(1) * 0.0)

    def loss(z: torch.Tensor, labels: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(z, z)
        same = labels[:, :, None] == labels[:, None, :]
        anchor = views == 0
        out = one_side(d, same, anchor, objective.margin)
        if objective.symmetric:
            out = out + objective.symmetric * one_side(d, same, ~anchor, objective.margin)
        return out

    return loss


def stderr_progress(line: str) -> None:
    """Progress lines for logs (stderr is not a terminal)."""
    print(line, file=sys.stderr, flush=True)
