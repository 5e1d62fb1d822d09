"""Bounded load test: 200 concurrent verify requests to a real uvicorn server on 127.0.0.1, zero errors.

p50/p95 latency is printed; with BIOMATCH_WRITE_RESULTS=1 it is also written to
benchmarks/results/gallery_load.json.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from biomatch.gallery.service import GalleryService
from biomatch.gallery.store import SQLiteStore
from biomatch.gallery.toy import PixelEmbedder, pattern_images
from biomatch.server import create_app
from biomatch.server.background import background_server

N_REQUESTS = 200


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    svc = GalleryService(PixelEmbedder(), SQLiteStore(tmp_path / "g.db"), threshold=0.5)
    for u in range(20):
        svc.enroll(f"user{u}", pattern_images(u, 3, seed=0))
    with background_server(create_app(svc, token="t")) as url:
        yield url


def test_200_concurrent_verifies(base_url: str) -> None:
    probes = []
    for u in range(20):
        buf = io.BytesIO()
        pattern_images(u, 4, seed=0)[3].save(buf, "PNG")
        probes.append(buf.getvalue())

    async def one(client: httpx.AsyncClient, i: int) -> tuple[float, int, bool]:
        u = i % 20
        t = time.perf_counter()
        r = await client.post("/verify", data={"user": f"user{u}"}, files={"file": ("p.png", probes[u], "image/png")})
        return time.perf_counter() - t, r.status_code, r.status_code == 200 and r.json()["accepted"]

    async def burst() -> list[tuple[float, int, bool]]:
        limits = httpx.Limits(max_connections=N_REQUESTS, max_keepalive_connections=N_REQUESTS)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(N_REQUESTS)))

    t0 = time.perf_counter()
    results = asyncio.run(burst())
    wall = time.perf_counter() - t0
    statuses = [s for _, s, _ in results]
    assert statuses == [200] * N_REQUESTS, {s: statuses.count(s) for s in set(statuses)}
    assert all(ok for _, _, ok in results)  # every genuine probe accepted: no corrupted answers
    ms = np.array([t for t, _, _ in results]) * 1e3
    p50, p95 = float(np.percentile(ms, 50)), float(np.percentile(ms, 95))
    print(f"\n{N_REQUESTS} concurrent verifies: p50 {p50:.0f} ms, p95 {p95:.0f} ms, wall {wall:.2f} s, 0 errors")
    if os.environ.get("BIOMATCH_WRITE_RESULTS") == "1":
        from biomatch.results import write_result

        write_result(
            "gallery_load", benchmark="gallery_load", method="uvicorn + FastAPI /verify, toy pixel embedder",
            dataset="20 synthetic users x 3 templates", seeds=[0],
            protocol=f"{N_REQUESTS} concurrent POST /verify over loopback (httpx, one connection each)",
            metrics={"errors": 0, "p50_ms": p50, "p95_ms": p95, "requests": N_REQUESTS},
            timing={"wall_s": wall, "requests_per_s": N_REQUESTS / wall},
        )
