"""Micro-batching: concurrent requests share one ``embedder.embed(list_of_images)`` call.

A server answering many verify requests at once would otherwise run one model forward per
request (items may be images for ``embed(list)``, or inputs already prepared per request, for
an embedder whose forward pass can be called on its own), each with its own per-call overhead and its own small matrix products. Here request
threads put their image on a queue and wait; one worker thread takes everything queued (up to
``max_batch``, waiting at most ``max_wait_s`` for more after the first) and embeds it in one
call, then hands each thread its row. ``workers`` > 1 runs that many batches at once (e.g. one
per core when one forward cannot use all of them). If the batched call fails (e.g. no face in one image),
the batch is re-run image by image so each request gets its own result or its own error.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EmbedFn = Callable[[Sequence[Any], Sequence[str]], np.ndarray]  # items (images or prepared arrays), names


@dataclass
class _Job:
    image: Any  # a PIL image, or an embedder's prepared input
    name: str
    future: Future[np.ndarray] = field(default_factory=Future)


class MicroBatcher:
    """Collects images from many threads into batches for one embed function (thread-safe)."""

    def __init__(self, embed: EmbedFn, max_batch: int = 32, max_wait_s: float = 0.002, workers: int = 1) -> None:
        if max_batch < 1 or max_wait_s < 0 or workers < 1:
            raise ValueError("max_batch and workers must be >= 1 and max_wait_s >= 0")
        self._embed, self.max_batch, self.max_wait_s, self.workers = embed, max_batch, max_wait_s, workers
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.batches = 0  # statistics, for tests and the load benchmark
        self.images = 0

    def embed(self, image: Any, name: str) -> np.ndarray:
        """Embed one image (as a row of some batch); re-raises that image's own error."""
        self._ensure_worker()
        job = _Job(image, name)
        self._queue.put(job)
        return job.future.result()

    def close(self) -> None:
        """Stop the workers (queued jobs are still answered first)."""
        with self._start_lock:
            for _ in self._threads:
                self._queue.put(None)
            for t in self._threads:
                t.join(timeout=10)
            self._threads = []

    def _ensure_worker(self) -> None:
        with self._start_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < self.workers:
                t = threading.Thread(target=self._run, name="biomatch-microbatch", daemon=True)
                t.start()
                self._threads.append(t)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:  # take what is already queued; then wait briefly for more
                    job = self._queue.get_nowait()
                except queue.Empty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        job = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            self._process(batch)
            if stop:
                return

    def _process(self, batch: list[_Job]) -> None:
        with self._stats_lock:
            self.batches += 1
            self.images += len(batch)
        try:
            out = np.asarray(self._embed([j.image for j in batch], [j.name for j in batch]), dtype=np.float32)
            if out.ndim != 2 or out.shape[0] != len(batch):
                raise ValueError(f"embedder returned shape {out.shape} for {len(batch)} images")
        except Exception as exc:  # noqa: BLE001 - one bad image must not fail its neighbours: retry one by one
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for job in batch:
                self._answer_alone(job)
            return
        for job, row in zip(batch, out):
            job.future.set_result(row[None, :])

    def _answer_alone(self, job: _Job) -> None:
        try:
            job.future.set_result(np.asarray(self._embed([job.image], [job.name]), dtype=np.float32))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request thread
            job.future.set_exception(exc)
