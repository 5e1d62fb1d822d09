"""End-to-end finetune of EfficientNet-Lite0 (up to stage 5) + projection head for 11k Hands
dorsal -> palmar, on the landmark-aligned crops exported by benchmarks/hands_finetune_export.py.

Self-contained (torch + numpy + PIL only): it runs on a GPU machine that has none of biomatch's
other dependencies. Why this shape: the best frozen method reads channel mean/std "taps" of Lite0
stages 2-5; here the same taps feed a [512, 128] head, and the stages themselves are finetuned.
Collapse-proof recipe (issue #14): the head first warms up on the frozen backbone, then backbone
(low LR) + head train together; BatchNorm statistics stay frozen; the only augmentation is a
random horizontal flip; P-K batches hold both views of every identity; the loss is the
symmetric cross-view batch-hard triplet of biomatch.losses (Euclidean, margin 0.1).

The training step budget is fixed ONCE before any seed runs, from a timed probe, so every seed
and recipe gets the same budget and everything fits `--budget-s`; results are written after every
(seed, recipe), so a run cut short keeps what it finished.

    python3 scripts/gpu_hands_finetune.py --data .gpu_hands --out $OUT [--budget-s 330]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Lite0 block args (efficientnet_lite_pytorch utils.efficientnet_lite): repeats, kernel, stride, expand, in, out
LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
TAP_STAGES = (2, 3, 4, 5)  # each tapped as channel mean and std, as configs/hands_e_lite0_aligned_geo05.yaml
BN_EPS, BN_MOM = 1e-3, 0.01
DROP_CONNECT = 0.2
# Two candidate recipes (the choice is made on tuning seeds 0-4 by benchmarks/hands_finetune_fusion.py).
RECIPES = {
    "A": {"backbone_lr": 2e-5, "head_lr": 1e-4, "warmup_steps": 300, "warmup_lr": 1e-3, "steps": 400},
    "B": {"backbone_lr": 1e-4, "head_lr": 1e-4, "warmup_steps": 300, "warmup_lr": 1e-3, "steps": 400},
}
P, K, MARGIN, WEIGHT_DECAY = 32, 4, 0.1, 1e-4


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (what the Lite0 weights were trained with)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Lite0 inverted-residual block (no squeeze-excitation, ReLU6); parameter names as the package's."""

    def __init__(self, k: int, s: int, e: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * e
        self.expand = e != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOM)
        self._depthwise_conv = SameConv(mid, mid, k, stride=s, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOM)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOM)
        self.skip = s == 1 and cin == cout

    def forward(self, x: torch.Tensor, drop: float) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.skip:
            if drop and self.training:  # stochastic depth, as the package's drop_connect
                keep = 1 - drop
                mask = torch.floor(keep + torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device))
                y = y / keep * mask
            y = y + x
        return y


class Lite0Taps(nn.Module):
    """Lite0 stem + blocks up to the end of stage 5 -> per-tap L2-normalized channel mean/std of
    stages 2-5 (512-d), exactly biomatch.hands.features.TapFeatures with those taps."""

    def __init__(self, drop_connect: float = DROP_CONNECT) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOM)
        blocks, self.stage_end = [], {}
        for n, (r, k, s, e, cin, cout) in enumerate(LITE0_STAGES, 1):
            for i in range(r):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
            self.stage_end[len(blocks) - 1] = n
        self.n_all = len(blocks)  # drop-connect rate scales with the index over ALL 16 blocks
        last = max(b for b, n in self.stage_end.items() if n == max(TAP_STAGES))
        self._blocks = nn.ModuleList(blocks[: last + 1])
        self.drop_connect = drop_connect
        self.dim = 2 * sum(LITE0_STAGES[n - 1][5] for n in TAP_STAGES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x, self.drop_connect * i / self.n_all)
            if self.stage_end.get(i) in TAP_STAGES:
                f = x.float().flatten(2)
                out += [F.normalize(f.mean(2), dim=1), F.normalize(f.std(2), dim=1)]
        return torch.cat(out, 1)


class Head(nn.Module):
    """biomatch.models.heads.ProjectionHead([512, 512, 128]): Linear-BN-ReLU-Linear, L2-normalized."""

    def __init__(self, dims=(512, 512, 128)) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dims[0], dims[1]), nn.BatchNorm1d(dims[1]), nn.ReLU(inplace=True),
                                 nn.Linear(dims[1], dims[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x.float()), dim=-1)


def cross_view_batch_hard(emb: torch.Tensor, labels: torch.Tensor, anchor: torch.Tensor, margin: float) -> torch.Tensor:
    """biomatch.losses.cross_view_batch_hard (hinge): anchors of one view, positives/negatives of the other."""
    a, o = torch.nonzero(anchor, as_tuple=True)[0], torch.nonzero(~anchor, as_tuple=True)[0]
    d = torch.cdist(emb[a], emb[o])
    same = labels[a][:, None] == labels[o][None, :]
    has = same.any(1) & (~same).any(1)
    pos = torch.where(same, d, torch.full_like(d, -torch.inf)).max(1).values
    neg = torch.where(same, torch.full_like(d, torch.inf), d).min(1).values
    return torch.clamp((pos - neg)[has] + margin, min=0).mean()


def loss_fn(emb: torch.Tensor, labels: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-view objective (biomatch.objectives.CrossViewObjective, symmetric=1)."""
    anchor = views == 0
    return cross_view_batch_hard(emb, labels, anchor, MARGIN) + cross_view_batch_hard(emb, labels, ~anchor, MARGIN)


class PKViewSampler:
    """P identities x K images, half dorsal half palmar per identity (with replacement when short)."""

    def __init__(self, labels: np.ndarray, views: np.ndarray, seed: int, p: int = P, k: int = K) -> None:
        self.groups = {int(lab): [np.flatnonzero((labels == lab) & (views == v)) for v in (0, 1)]
                       for lab in np.unique(labels)}
        self.groups = {lab: g for lab, g in self.groups.items() if len(g[0]) and len(g[1])}
        self.p, self.k, self.rng = min(p, len(self.groups)), k, np.random.default_rng(seed)
        self.ids, self.queue = np.array(sorted(self.groups)), []

    def batch(self) -> np.ndarray:
        if len(self.queue) < self.p:
            self.queue += [int(x) for x in self.rng.permutation(self.ids) if int(x) not in self.queue]
        chosen, self.queue = self.queue[: self.p], self.queue[self.p:]
        out = []
        for lab in chosen:
            for v, n in ((0, self.k // 2), (1, self.k - self.k // 2)):
                g = self.groups[lab][v]
                out += list(self.rng.choice(g, n, replace=len(g) < n))
        return np.array(out)


def load_data(folder: str, limit: int | None):
    """Decoded aligned crops as one uint8 (N, 3, S, S) tensor, plus metadata and splits."""
    z = np.load(os.path.join(folder, "images.npz"))
    offsets, blob = z["offsets"], z["jpeg"]
    with open(os.path.join(folder, "meta.json")) as fh:
        meta = json.load(fh)
    n = len(offsets) - 1

    def decode(i: int) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))

    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as ex:
        imgs = np.stack(list(ex.map(decode, range(n))))
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), meta


class Runner:
    """Everything on one device: images, normalization, the pretrained backbone state."""

    def __init__(self, images: torch.Tensor, device: str, weights: str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.images = images.to(self.device)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1) * 255
        self.state = torch.load(weights, map_location="cpu", weights_only=True)
        self.fmt = torch.channels_last if self.cuda else torch.contiguous_format

    def backbone(self) -> Lite0Taps:
        bb = Lite0Taps()
        bb.load_state_dict(self.state, strict=True)
        return bb.to(self.device, memory_format=self.fmt)

    def batch(self, idx, flip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.images[torch.as_tensor(idx, device=self.device)].float()
        if flip is not None:
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return ((x - self.mean) / self.std).contiguous(memory_format=self.fmt)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else torch.autocast("cpu", enabled=False)

    @torch.no_grad()
    def features(self, bb: nn.Module, idx: np.ndarray, flip: bool, bs: int = 256) -> torch.Tensor:
        bb.eval()
        out = []
        for i in range(0, len(idx), bs):
            part = idx[i:i + bs]
            f = torch.ones(len(part), dtype=torch.bool, device=self.device) if flip else None
            with self.autocast():
                out.append(bb(self.batch(part, f)).float())
        return torch.cat(out)

    @torch.no_grad()
    def embed(self, bb: nn.Module, head: nn.Module, idx: np.ndarray) -> np.ndarray:
        """Flip-TTA embeddings: mean of the image's and its mirror's, L2-normalized."""
        head.eval()
        z = head(self.features(bb, idx, False)) + head(self.features(bb, idx, True))
        return F.normalize(z, dim=1).cpu().numpy()


def set_train(bb: nn.Module) -> None:
    """Train mode with BatchNorm statistics frozen (a 64-128-image batch of one data set would drift them)."""
    bb.train()
    for m in bb.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def ranks_summary(q: np.ndarray, g: np.ndarray, q_lab: list, g_lab: list) -> dict:
    """R@1 and mean first-correct rank (pessimistic on ties), for the log only."""
    s = q @ g.T
    same = np.array(q_lab)[:, None] == np.array(g_lab)[None, :]
    best_true = np.where(same, s, -np.inf).max(1)
    rank = (np.where(same, -np.inf, s) >= best_true[:, None]).sum(1) + 1
    return {"recall@1": float((rank == 1).mean()), "mean_rank": float(rank.mean())}


def run_one(r: Runner, frozen: tuple[torch.Tensor, torch.Tensor], split: dict, recipe: dict, steps: int,
            warm_steps: int, seed: int, log: dict) -> dict:
    """Warm the head up on frozen features, finetune backbone + head, embed the test set."""
    torch.manual_seed(seed)
    train = np.array(split["train"])
    labels_np, views_np = np.array(split["train_labels"]), np.array(split["train_views"])
    labels = torch.as_tensor(labels_np, device=r.device)
    views = torch.as_tensor(views_np, device=r.device)
    sampler = PKViewSampler(labels_np, views_np, seed)
    gen = torch.Generator(device=r.device).manual_seed(seed)
    head = Head().to(r.device)
    plain, mirrored = frozen[0][train], frozen[1][train]
    opt = torch.optim.Adam(head.parameters(), lr=recipe["warmup_lr"], weight_decay=WEIGHT_DECAY)
    t0 = time.perf_counter()
    warm_loss = []
    head.train()
    for step in range(warm_steps):
        b = torch.as_tensor(sampler.batch(), device=r.device)
        flip = torch.rand(len(b), device=r.device, generator=gen) < 0.5
        x = torch.where(flip[:, None], mirrored[b], plain[b])
        loss = loss_fn(head(x), labels[b], views[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        warm_loss.append(loss.item() if step % 20 == 0 or step == warm_steps - 1 else None)
    bb = r.backbone()
    q, g = np.array(split["query"]), np.array(split["gallery"])
    warm_q, warm_g = r.embed(bb, head, q), r.embed(bb, head, g)
    t1 = time.perf_counter()
    params = [{"params": bb.parameters(), "lr": recipe["backbone_lr"]},
              {"params": head.parameters(), "lr": recipe["head_lr"]}]
    opt = torch.optim.AdamW(params, weight_decay=WEIGHT_DECAY)
    base = [recipe["backbone_lr"], recipe["head_lr"]]
    ft_loss = []
    for step in range(steps):
        scale = min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        for grp, lr in zip(opt.param_groups, base):
            grp["lr"] = lr * scale
        set_train(bb)
        head.train()
        b = torch.as_tensor(sampler.batch(), device=r.device)
        flip = torch.rand(len(b), device=r.device, generator=gen) < 0.5
        with r.autocast():
            emb = head(bb(r.batch(b, flip)))
        loss = loss_fn(emb.float(), labels[b], views[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            ft_loss.append([step, round(loss.item(), 5)])
    ft_q, ft_g = r.embed(bb, head, q), r.embed(bb, head, g)
    t2 = time.perf_counter()
    ql, gl = split["query_labels"], split["gallery_labels"]
    rec = {"warmup_s": t1 - t0, "finetune_s": t2 - t1, "warm_steps": warm_steps, "steps": steps,
           "warmup_loss": [v for v in warm_loss if v is not None], "finetune_loss": ft_loss,
           "warm_only": ranks_summary(warm_q, warm_g, ql, gl), "finetuned": ranks_summary(ft_q, ft_g, ql, gl)}
    log.update(rec)
    return {"q": ft_q, "g": ft_g, "warm_q": warm_q, "warm_g": warm_g}


def probe_step_s(r: Runner, split: dict, n: int | None = None) -> float:
    """Seconds per finetune step (after warm-up steps), to size the budget before any seed runs."""
    bb, head = r.backbone(), Head().to(r.device)
    opt = torch.optim.AdamW(list(bb.parameters()) + list(head.parameters()), lr=1e-6)
    sampler = PKViewSampler(np.array(split["train_labels"]), np.array(split["train_views"]), 0)
    labels = torch.as_tensor(split["train_labels"], device=r.device)
    views = torch.as_tensor(split["train_views"], device=r.device)
    n = n or (12 if r.cuda else 2)  # a CPU step takes seconds: a short probe there
    warm = 3 if r.cuda else 1
    times = []
    for i in range(n + warm):
        if r.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        set_train(bb)
        b = torch.as_tensor(sampler.batch(), device=r.device)
        with r.autocast():
            emb = head(bb(r.batch(b)))
        loss = loss_fn(emb.float(), labels[b], views[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if r.cuda:
            torch.cuda.synchronize()
        if i >= warm:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=".gpu_hands")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_hands_out"))
    ap.add_argument("--seeds", default="0,1,2,3,4,10,11,12,13,14,15,16,17,18,19")
    ap.add_argument("--recipes", default="A,B")
    ap.add_argument("--budget-s", type=float, default=330.0, help="wall seconds for ALL training, from start")
    ap.add_argument("--max-steps-scale", type=float, default=1.0, help="cap on the recipes' nominal steps")
    ap.add_argument("--limit", type=int, default=None, help="(CPU tests) use only this many training images")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    print(f"device: {device_name}; torch {torch.__version__}", flush=True)
    images, meta = load_data(args.data, args.limit)
    load_s = time.perf_counter() - start
    print(f"decoded {len(images)} crops {tuple(images.shape[1:])} in {load_s:.1f} s", flush=True)
    r = Runner(images, args.device, os.path.join(args.data, meta["weights_file"]))
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = args.recipes.split(",")
    splits = {int(k): v for k, v in meta["splits"].items()}
    if args.limit:  # tiny CPU test: the first `limit` training images of each split (test set whole)
        for sp in splits.values():
            for key in ("train", "train_labels", "train_views"):
                sp[key] = sp[key][: args.limit]
    # frozen features (plain + mirrored) of every image the planned seeds use, for the head
    # warm-up: the pretrained backbone is the same for all seeds, so once
    bb0 = r.backbone()
    used = np.array(sorted({i for s in seeds for key in ("train", "query", "gallery") for i in splits[s][key]}))
    frozen = (torch.zeros(len(images), bb0.dim, device=r.device), torch.zeros(len(images), bb0.dim, device=r.device))
    frozen[0][used], frozen[1][used] = r.features(bb0, used, False), r.features(bb0, used, True)
    del bb0
    print(f"frozen features of {len(used)} images: {time.perf_counter() - start:.1f} s", flush=True)
    step_s = probe_step_s(r, splits[seeds[0]])
    runs = [(s, rec) for s in seeds for rec in recipes]
    spent = time.perf_counter() - start
    # per run: finetune steps + fixed costs (warm-up head ~ 3 ms/step, embedding ~ 4 x test set fwd)
    fixed = 4.0 if r.cuda else 30.0
    per_run_budget = (args.budget_s - spent) / len(runs) - fixed
    nominal = max(RECIPES[x]["steps"] for x in recipes)
    scale = min(args.max_steps_scale, max(per_run_budget, 0) / (nominal * step_s))
    print(f"probe: {step_s * 1000:.1f} ms/step; {len(runs)} runs; steps scale {scale:.2f} "
          f"(nominal {nominal} steps, budget {args.budget_s:.0f} s, {spent:.0f} s spent)", flush=True)
    log = {"device": device_name, "torch": torch.__version__, "cuda": r.cuda, "load_s": load_s,
           "probe_step_s": step_s, "steps_scale": scale, "recipes": RECIPES, "p": P, "k": K, "margin": MARGIN,
           "crop": meta["crop"], "export": {k: v for k, v in meta.items() if k != "splits"},
           "seeds_planned": seeds, "runs": [], "skipped": []}
    arrays: dict[str, np.ndarray] = {"names": np.array(meta["names"])}
    for seed, name in runs:
        recipe = RECIPES[name]
        steps = max(1, round(recipe["steps"] * scale))
        warm_steps = recipe["warmup_steps"]  # head-only steps on cached features: cheap, never scaled
        elapsed = time.perf_counter() - start
        done = log["runs"]
        est = (np.mean([d["warmup_s"] + d["finetune_s"] for d in done]) if done else steps * step_s + fixed)
        if elapsed + est > args.budget_s:
            log["skipped"].append({"seed": seed, "recipe": name, "elapsed_s": elapsed, "estimate_s": est})
            print(f"skip seed {seed} recipe {name}: {elapsed:.0f} s + {est:.0f} s > budget", flush=True)
            continue
        entry = {"seed": seed, "recipe": name}
        out = run_one(r, frozen, splits[seed], recipe, steps, warm_steps, seed * 1000 + ord(name), entry)
        for k, v in out.items():
            arrays[f"s{seed}_{name}_{k}"] = v.astype(np.float16)  # 30 runs stay far below 16 MB
        arrays[f"s{seed}_query"] = np.array(splits[seed]["query"])
        arrays[f"s{seed}_gallery"] = np.array(splits[seed]["gallery"])
        entry["elapsed_s"] = time.perf_counter() - start
        log["runs"].append(entry)
        tmp = os.path.join(args.out, "hands_ft.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, os.path.join(args.out, "hands_ft.npz"))
        log["wall_s"] = time.perf_counter() - start
        with open(os.path.join(args.out, "hands_ft_log.json"), "w") as fh:
            json.dump(log, fh, indent=1)
        print(f"seed {seed} recipe {name}: warm-only R@1 {entry['warm_only']['recall@1']:.3f} "
              f"MR {entry['warm_only']['mean_rank']:.2f} -> finetuned R@1 {entry['finetuned']['recall@1']:.3f} "
              f"MR {entry['finetuned']['mean_rank']:.2f} ({entry['warmup_s']:.1f}+{entry['finetune_s']:.1f} s, "
              f"{entry['elapsed_s']:.0f} s total)", flush=True)
    log["wall_s"] = time.perf_counter() - start
    with open(os.path.join(args.out, "hands_ft_log.json"), "w") as fh:
        json.dump(log, fh, indent=1)
    print(f"done: {len(log['runs'])} runs, {len(log['skipped'])} skipped, {log['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
