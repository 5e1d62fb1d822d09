"""Benchmark results: the JSON schema of DESIGN.md and the BENCHMARKS.md sections.

Every benchmark calls `write_result` once per method/protocol and `update_benchmarks_section`
once with its Markdown table. Sections are delimited by HTML comments so that several
benchmarks can own parts of one BENCHMARKS.md without overwriting each other.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from biomatch.paths import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"


def machine_description() -> str:
    """A short, honest description of where the numbers were measured."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"gpu: {torch.cuda.get_device_name(0)}; cpu: {os.cpu_count()} cores"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"cpu: {os.cpu_count()} cores ({platform.machine()}, {cpu_model()}); "
            f"load {load:.1f} (1-min average when written)")


def cpu_model() -> str:
    """The CPU's model name and the vector instructions PyTorch uses on it (e.g. "AMD EPYC, AVX2").

    Why: the same 2-core VM type has come with different CPUs; on an AMD EPYC with AVX2 only the
    hands demo ran ~1.5× slower than on earlier VMs (not recorded then) and its heads' results
    differed in the last digits, so a result is tied to the CPU it was measured on."""
    name = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        pass
    try:
        import torch

        isa = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):  # pragma: no cover - torch is a hard dependency
        isa = ""
    return ", ".join(x for x in (name, isa) if x) or "unknown"


def git_commit() -> str:
    """The current commit, marked '-dirty' when the working tree differs from it."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample std (ddof=1; 0 for one value) of one metric over seeds."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def write_result(
    name: str,
    *,
    benchmark: str,
    method: str,
    dataset: str,
    protocol: str,
    seeds: Sequence[int],
    metrics: Mapping[str, Any],
    reference: Mapping[str, Any] | None = None,
    timing: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    results_dir: Path = RESULTS_DIR,
) -> Path:
    """Write benchmarks/results/<name>.json in the DESIGN.md schema and return its path."""
    record: dict[str, Any] = {
        "benchmark": benchmark,
        "method": method,
        "dataset": dataset,
        "protocol": protocol,
        "seeds": list(seeds),
        "metrics": dict(metrics),
        "reference": dict(reference or {}),
        "timing": dict(timing or {}),
        "machine": machine_description(),
        "commit": git_commit(),
        "date": _dt.date.today().isoformat(),
    }
    if extra:
        record.update(extra)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats are printed with 3 decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def update_benchmarks_section(section: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section `section` of BENCHMARKS.md, under a file lock."""
    start, end = f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    path.touch(exist_ok=True)
    with open(path, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        text = fh.read() or "# Benchmarks\n\nEvery row below is written by a script in benchmarks/; see each section.\n"
        if start in text and end in text:
            before, rest = text.split(start, 1)
            after = rest.split(end, 1)[1]
            text = before + block + after
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        fh.seek(0)
        fh.truncate()
        fh.write(text)
