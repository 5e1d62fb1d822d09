"""Progress of a long pass over items: a tqdm bar on a terminal, a line every `every` items in a log.

Why both: a bar is what a person at a terminal wants, but in a log (CI, `biomatch demo > out.log`)
tqdm's carriage returns are noise, while a silent minute looks like a hang. Thread-safe, so the
workers of one pass can share it.
"""

from __future__ import annotations

import sys
import threading
import time


class CountProgress:
    """`update(n)` after each n items done; `close()` at the end (or use it as a context manager).
    With `enabled=False` it does nothing."""

    def __init__(self, total: int, desc: str, every: int, enabled: bool = True) -> None:
        self.total, self.desc, self.every, self.enabled = total, desc, max(1, every), enabled
        self.done, self.lock, self.start = 0, threading.Lock(), time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False)

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        with self.lock:
            before, self.done = self.done, self.done + n
            if self.bar is not None:
                self.bar.update(n)
            elif self.done // self.every > before // self.every or self.done == self.total:
                print(f"  {self.desc} {self.done}/{self.total} ({time.perf_counter() - self.start:.0f} s)",
                      file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> CountProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
