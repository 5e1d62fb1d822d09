"""SIGKILL a process mid-enrolment: the store must open clean with every committed enrolment intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from biomatch.gallery.store import SQLiteStore

PER_USER, DIM = 40, 32

CHILD = textwrap.dedent(
    f"""
    import sys, time
    import numpy as np
    from biomatch.gallery.store import SQLiteStore

    path, start, stall_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = SQLiteStore(path)
    real_conn = store._conn

    class Stalling:
        '''Pauses half-way through the INSERTs of enrolment `stall_at`, so the kill lands mid-transaction.'''
        def __init__(self):
            self.rows = 0
        def execute(self, sql, *args):
            out = real_conn.execute(sql, *args)
            if sql.startswith("INSERT INTO templates"):
                self.rows += 1
                if self.rows == {PER_USER // 2}:
                    print("mid", flush=True)
                    time.sleep(60)
            return out

    for i in range(start, start + 10_000):
        vecs = np.random.default_rng(i).standard_normal(({PER_USER}, {DIM})).astype(np.float32)
        if i == stall_at:
            store._conn = Stalling()
        store.add(f"u{{i:05d}}", vecs, "model")
        print("committed", i, flush=True)
    """
)


def _spawn(path: Path, start: int, stall_at: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(start), str(stall_at)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _kill_after(proc: subprocess.Popen[str], stop: str, deadline_s: float = 30.0) -> list[int]:
    """Read the child's commits until a line starts with `stop`, then SIGKILL it."""
    committed, t0 = [], time.monotonic()
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("committed"):
            committed.append(int(line.split()[1]))
        if line.startswith(stop) or time.monotonic() - t0 > deadline_s:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return committed


def _check(path: Path, committed: list[int]) -> set[int]:
    with SQLiteStore(path) as store:
        assert store.integrity_check() == "ok"
        t = store.templates("model")
        present = {int(u[1:]) for u in t.users}
        assert set(committed) <= present  # nothing committed was lost
        for i in present:  # and every stored enrolment is whole and bit-exact
            rows = t.vectors[[u == f"u{i:05d}" for u in t.users]]
            expected = np.random.default_rng(i).standard_normal((PER_USER, DIM)).astype(np.float32)
            np.testing.assert_array_equal(rows, expected)
        assert {u.user for u in store.users()} == {f"u{i:05d}" for i in present}  # no empty user rows
        return present


def test_kill_mid_transaction_then_mid_loop(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    # 1) deterministic: killed while half of enrolment 8's rows are written, inside its transaction
    committed = _kill_after(_spawn(path, 0, stall_at=8), "mid")
    assert committed == list(range(8))
    present = _check(path, committed)
    assert present == set(range(8))  # the half-written enrolment left nothing behind
    # 2) a restarted writer continues; killed at an arbitrary moment of a tight enrolment loop
    proc = _spawn(path, 8, stall_at=-1)
    committed = _kill_after(proc, "committed 40")
    present = _check(path, list(range(8)) + committed)
    assert len(present) >= 8 + 33
