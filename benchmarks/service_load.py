"""HTTP verify under load: 200 concurrent clients on loopback, with and without micro-batching.

    python benchmarks/service_load.py [--clients 200] [--requests 3000] [--max-seconds 60]
                                      [--embedder face-crop] [--threads 1] [--users 20]

What is measured: a real `biomatch serve` process (uvicorn + FastAPI, SQLite store, the vendored
MobileFaceNet ONNX float model on pre-cropped LFW faces) answers POST /verify from ``--clients``
concurrent keep-alive connections, each from its own loopback address (127.0.0.x, so the
per-client guessing limits see 200 clients, as they would in the field). The same run starts
the server twice, ``--micro-batch`` and ``--no-micro-batch``, same data, same order; each phase
stops after ``--requests`` answers or ``--max-seconds``, whichever comes first. Recorded:
requests/s (answers per wall second), latency p50/p95/p99 over every request, errors
(transport errors and any status other than 200), the share of accepted probes, the server
process's CPU time per answered request (user + system, from /proc: the load-independent
cost), and the machine load before/after.

Data: LFW62 (people with >= 20 photos; ../shared/data/lfw62, 112x112 crops of the central 150 px
of deep-funneled LFW): ``--users`` people, 3 enrolment photos each, probes = their other photos
that the same model accepts at the threshold (chosen offline, so no client ever accumulates
failures: this is a throughput test, not an accuracy test). The client is a minimal asyncio
HTTP/1.1 client with prebuilt request bytes, to leave the CPU to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from biomatch.paths import REPO_ROOT, dataset_dir
from biomatch.results import markdown_table, update_benchmarks_section, write_result

BOUNDARY = "biomatchloadbench"


def _request(port: int, user: str, image: bytes) -> bytes:
    body = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\n{user}\r\n"
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (
        f"POST /verify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def prepare(users: int, embedder_name: str, store: Path) -> tuple[float, str, list[tuple[str, list[bytes]]]]:
    """Enrol ``users`` LFW62 people (3 photos each) and pick their accepted probe photos."""
    from PIL import Image

    from biomatch.gallery.service import GalleryService
    from biomatch.gallery.setup import load_embedder, load_threshold
    from biomatch.gallery.store import SQLiteStore

    emb = load_embedder(embedder_name)
    try:
        threshold, source = float(load_threshold(emb, None, None)), "calibrated artifact beside the model"
    except Exception as exc:  # noqa: BLE001 - a benchmark of throughput can run with a stated threshold
        threshold, source = 0.3, f"fixed 0.3: no calibrated {embedder_name} threshold was available ({type(exc).__name__})"
    root = dataset_dir("lfw62")
    people = sorted(p for p in root.iterdir() if p.is_dir())[:users]
    svc = GalleryService(emb, SQLiteStore(store), threshold)
    plan = []
    for i, person in enumerate(people):
        files = sorted(person.glob("*.jpg"))
        user = f"user{i:03d}"
        svc.enroll(user, [Image.open(f).convert("RGB") for f in files[:3]])
        probes = []
        for f in files[3:15]:
            if svc.verify(user, Image.open(f).convert("RGB")).accepted:
                probes.append(f.read_bytes())
        if probes:
            plan.append((user, probes))
    svc.store.close()
    return threshold, source, plan


def forward_cost(embedder_name: str, images: list[bytes], threads: int) -> dict[str, float]:
    """CPU ms per image of the model forward alone at batch sizes 1, 8, 32 (process CPU time,
    so other jobs on the machine matter less): does batching make each image cheaper?"""
    import io

    from PIL import Image

    from biomatch.gallery.setup import load_embedder

    emb = load_embedder(embedder_name, threads=threads)
    if not callable(getattr(emb, "embed_arrays", None)):
        return {}
    x = np.concatenate([emb.preprocess.batch([Image.open(io.BytesIO(b)).convert("RGB")]) for b in images[:32]])
    emb.embed_arrays(x[:4])
    out = {}
    for bs in (1, 8, 32):
        n, t0 = 0, time.process_time()
        while n < 96:
            emb.embed_arrays(x[:bs])
            n += bs
        out[f"batch_{bs}"] = (time.process_time() - t0) * 1e3 / n
    return out


async def _client(idx: int, port: int, requests: list[bytes], state: dict, lat: list[float],
                  statuses: dict[str, int]) -> None:
    local = (f"127.0.0.{2 + idx % 250}", 0)
    reader = writer = None
    k = 0
    while state["left"] > 0 and time.perf_counter() < state["deadline"]:
        state["left"] -= 1
        req = requests[k % len(requests)]
        k += 1
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
            writer.write(req)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            if status == "200" and b'"accepted":true' in body:
                status = "200-accepted"
            elif status == "200":
                status = "200-rejected"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            status = f"transport:{type(exc).__name__}"
            if writer is not None:
                writer.close()
            reader = writer = None
        lat.append(time.perf_counter() - t0)
        statuses[status] = statuses.get(status, 0) + 1
    if writer is not None:
        writer.close()


async def _load(port: int, plan: list[tuple[str, list[bytes]]], clients: int, n_requests: int,
                max_seconds: float) -> dict:
    per_client = []
    for i in range(clients):
        user, probes = plan[i % len(plan)]
        per_client.append([_request(port, user, p) for p in probes])
    state = {"left": n_requests, "deadline": time.perf_counter() + max_seconds}
    lat: list[float] = []
    statuses: dict[str, int] = {}
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(i, port, per_client[i], state, lat, statuses) for i in range(clients)))
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1e3
    answered = sum(v for s, v in statuses.items() if s.startswith("200"))
    errors = sum(v for s, v in statuses.items() if not s.startswith("200"))
    return {
        "requests": len(lat), "answered_200": answered, "errors": errors, "wall_s": wall,
        "requests_per_s": answered / wall, "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
        "accepted_share": statuses.get("200-accepted", 0) / max(1, answered), "statuses": statuses,
    }


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_phase(batched: bool, args: argparse.Namespace, store: Path, threshold: float,
              plan: list[tuple[str, list[bytes]]]) -> dict:
    """Start a server, warm it up, run the load, stop it."""
    import httpx

    port, token = _free_port(), secrets.token_urlsafe(12)
    cmd = [sys.executable, "-m", "biomatch.cli", "serve", "--port", str(port), "--store", str(store),
           "--embedder", args.embedder, "--threshold", str(threshold), "--token", token,
           "--threads", str(args.threads), "--micro-batch" if batched else "--no-micro-batch",
           "--batch-max", str(args.batch_max), "--batch-workers", str(args.batch_workers)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"server did not start: {server.stdout.read() if server.stdout else ''}")
            time.sleep(0.3)
        asyncio.run(_load(port, plan, min(20, args.clients), 40, 30))  # warm-up: threads, sessions, caches
        load_before = os.getloadavg()
        cpu0 = _cpu_s(server.pid)
        out = asyncio.run(_load(port, plan, args.clients, args.requests, args.max_seconds))
        out["server_cpu_ms_per_request"] = (_cpu_s(server.pid) - cpu0) * 1e3 / max(1, out["answered_200"])
        out["load_before"], out["load_after"] = list(load_before), list(os.getloadavg())
        return out
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=3000, help="answers per phase (bound)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time per phase (bound)")
    parser.add_argument("--embedder", default="face-crop")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the server's model")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--batch-max", type=int, default=8, help="server --batch-max (batched phase)")
    parser.add_argument("--batch-workers", type=int, default=2, help="server --batch-workers (batched phase)")
    parser.add_argument("--no-write", action="store_true", help="print only; no JSON / BENCHMARKS.md")
    args = parser.parse_args()
    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="biomatch-load-") as tmp:
        store = Path(tmp) / "gallery.db"
        t0 = time.perf_counter()
        threshold, source, plan = prepare(args.users, args.embedder, store)
        prep_s = time.perf_counter() - t0
        n_probes = sum(len(p) for _, p in plan)
        print(f"{len(plan)} users enrolled, {n_probes} accepted probes, threshold {threshold:.4f} ({source}); "
              f"{prep_s:.0f} s", flush=True)
        forward = forward_cost(args.embedder, [p for _, ps in plan for p in ps], args.threads)
        print("model forward, CPU ms per image by batch size: "
              + ", ".join(f"{k} {v:.2f}" for k, v in forward.items()), flush=True)
        phases = {}
        for name, batched in (("batched", True), ("unbatched", False)):
            phases[name] = run_phase(batched, args, store, threshold, plan)
            p = phases[name]
            print(f"{name}: {p['requests_per_s']:.1f} req/s, p50 {p['p50_ms']:.0f} ms, p95 {p['p95_ms']:.0f} ms, "
                  f"p99 {p['p99_ms']:.0f} ms, errors {p['errors']}, {p['requests']} requests in {p['wall_s']:.1f} s, "
                  f"server CPU {p['server_cpu_ms_per_request']:.1f} ms/request, "
                  f"load {p['load_before'][0]:.1f} -> {p['load_after'][0]:.1f}; {json.dumps(p['statuses'])}", flush=True)
    b, u = phases["batched"], phases["unbatched"]
    speedup = b["requests_per_s"] / max(u["requests_per_s"], 1e-9)
    print(f"micro-batching speed-up: {speedup:.2f}x", flush=True)
    if args.no_write:
        return
    protocol = (f"{args.clients} concurrent keep-alive clients (one loopback address each) POST /verify to a "
                f"`biomatch serve` process on 127.0.0.1; per phase {args.requests} answers or {args.max_seconds:.0f} s; "
                f"server with --micro-batch (--batch-max {args.batch_max}, --batch-workers {args.batch_workers}), then "
                f"--no-micro-batch, same data; onnxruntime threads {args.threads}; "
                "after a 40-request warm-up")
    write_result(
        "service_load", benchmark="service_load",
        method=f"uvicorn + FastAPI /verify, {args.embedder} (MobileFaceNet ONNX float), SQLite store, micro-batching on/off",
        dataset=f"LFW62: {len(plan)} users x 3 enrolment photos, {n_probes} accepted probe photos",
        protocol=protocol, seeds=[0],
        metrics={"batched": {k: v for k, v in b.items() if k != "statuses"},
                 "unbatched": {k: v for k, v in u.items() if k != "statuses"},
                 "speedup_req_per_s": speedup},
        reference={"source": "DESIGN.md / issue #11 targets",
                   "metrics": {"requests_per_s": 60, "p99_ms": 5000, "errors": 0, "speedup_req_per_s": 3}},
        timing={"prepare_s": prep_s},
        extra={"load": load_start + [b["load_before"][0], u["load_after"][0]],
               "statuses": {"batched": b["statuses"], "unbatched": u["statuses"]},
               "threshold": {"value": threshold, "source": source},
               "forward_cpu_ms_per_image": forward},
    )
    rows = [[name, f"{p['requests_per_s']:.1f}", f"{p['p50_ms']:.0f}", f"{p['p95_ms']:.0f}", f"{p['p99_ms']:.0f}",
             p["errors"], p["requests"], f"{p['server_cpu_ms_per_request']:.1f}",
             f"{p['load_before'][0]:.1f} → {p['load_after'][0]:.1f}"]
            for name, p in phases.items()]
    met = (b["requests_per_s"] >= 60 and b["p99_ms"] <= 5000 and b["errors"] == 0 and speedup >= 3)
    md = (
        "## HTTP verify under load (unlock service)\n\n"
        f"`python benchmarks/service_load.py` — {protocol}. {args.embedder}: MobileFaceNet ONNX float on "
        f"LFW62 crops, {len(plan)} users × 3 templates, probes the model accepts (threshold {threshold:.3f}, {source}). "
        "Latency over every request of the phase; errors = transport errors or any status other than 200. "
        "Machine: " + f"{os.cpu_count()} cores, 1-min load shown per phase (other jobs were running: an upper bound "
        "on latency, a lower bound on throughput).\n\n"
        + markdown_table(["server", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "requests",
                          "server CPU ms/req", "load"], rows)
        + "\n\nModel forward alone (MobileFaceNet ONNX, flip TTA, 1 thread), CPU ms per image: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in forward.items())
        + " — on this CPU a batched forward costs more per image, so batching cannot buy throughput here."
        + f"\n\nMicro-batching speed-up: **{speedup:.2f}×**. Targets (≥ 60 req/s, p99 ≤ 5 s, 0 errors, ≥ 3× unbatched): "
        + ("met." if met else "not all met — see the row above.")
    )
    update_benchmarks_section("service_load", md)
    print(f"wrote {REPO_ROOT / 'benchmarks' / 'results' / 'service_load.json'}")


if __name__ == "__main__":
    main()
