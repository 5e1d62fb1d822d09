"""Guessing limits for verify and identify: atomic, per (user, client) and per client.

Design (README security section):
- A *failure* is a verify that did not unlock (rejected face or unknown user) or an identify
  that named nobody. Failures are counted in a sliding window (default 300 s) under two keys:
  the pair (user, client) — default 5 — and the client alone, over all users — default 20.
  The client is the TCP peer address.
- Check and record are one step: ``acquire`` takes a lock and admits an attempt only while
  recorded failures *plus attempts still in flight* stay under each limit; ``release`` turns
  the reservation into a failure or frees it. An attempt that would overbook a limit waits
  (bounded) for the ones in flight instead of being scored alongside them; once recorded
  failures reach a limit, it gets 429. So 100 simultaneous wrong verifies for one user from one
  client score at most 5 faces, while many concurrent genuine requests (one busy client, a load
  test) are only queued, never refused.
- A client that has exhausted a (user, client) pair may not identify either (otherwise
  identify would score the locked user for it), and identify calls that name nobody count
  against the client's own budget.
- Nobody can lock a user out for others: the lockout is per (user, client), so five wrong
  faces sent from an attacker's address do not stop the genuine user's phone, which has not
  failed. A successful unlock clears that pair's failures (not the client's own count).
- Not covered: an attacker with many addresses gets 5 tries per user per address per window
  (at the calibrated FAR of 1e-3 that is about 1 success per 200 addresses per user); put a
  proxy limit in front for that, and configure it to pass the real peer address. State is in
  memory, per server process; several processes behind one address need a shared counter.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Key = tuple[str, str]  # ("pair", f"{user}\0{client}") or ("client", client)


class Throttled(Exception):
    """Refused before evaluation; ``retry_after`` seconds until a slot frees up."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, max(1.0, retry_after)


@dataclass(frozen=True)
class Ticket:
    """A reserved attempt: hand it back to ``release`` exactly once."""

    keys: tuple[Key, ...]
    pair: Key | None


class AttemptLimiter:
    """Sliding-window failure counts with in-flight reservations (thread-safe, one lock).

    ``max_queue_s``: how long an attempt may wait for attempts in flight before it gets 429.
    """

    def __init__(
        self,
        per_user_client: int = 5,
        per_client: int = 20,
        window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_queue_s: float = 30.0,
    ) -> None:
        if per_user_client < 1 or per_client < 1 or window_s <= 0:
            raise ValueError("limits must be >= 1 and the window > 0")
        self.per_user_client, self.per_client, self.window_s = per_user_client, per_client, window_s
        self.max_queue_s = max_queue_s
        self._clock = clock
        self._failures: dict[Key, deque[float]] = {}
        self._pending: dict[Key, int] = {}
        self._cond = threading.Condition(threading.Lock())
        self._calls = 0

    @staticmethod
    def _pair(user: str, client: str) -> Key:
        return ("pair", f"{user}\0{client}")

    def _limit(self, key: Key) -> int:
        return self.per_user_client if key[0] == "pair" else self.per_client

    def _log(self, key: Key, now: float) -> deque[float]:
        log = self._failures.get(key)
        if log is None:
            return deque()
        while log and now - log[0] >= self.window_s:
            log.popleft()
        if not log:
            del self._failures[key]
        return log

    def _admit(self, checks: list[tuple[Key, str]], reserve: tuple[Key, ...]) -> None:
        """Under the lock: raise Throttled if a limit is used up by recorded failures; wait while
        attempts in flight could still use it up; then reserve ``reserve``."""
        deadline = self._clock() + self.max_queue_s
        while True:
            now = self._clock()
            self._sweep(now)
            busy = False
            for key, reason in checks:
                log, limit = self._log(key, now), self._limit(key)
                if len(log) >= limit:
                    raise Throttled(reason, self.window_s - (now - log[0]))
                busy = busy or len(log) + self._pending.get(key, 0) >= limit
            if not busy:
                for key in reserve:
                    self._pending[key] = self._pending.get(key, 0) + 1
                return
            if now >= deadline:
                raise Throttled("too many attempts in flight", 1.0)
            self._cond.wait(timeout=min(0.5, deadline - now))

    def _sweep(self, now: float) -> None:
        """Bound memory: drop expired logs now and then."""
        self._calls += 1
        if self._calls % 1024 == 0:
            for key in list(self._failures):
                self._log(key, now)

    def acquire_verify(self, user: str, client: str) -> Ticket:
        """Reserve one verify of ``user`` from ``client`` (may wait), or raise Throttled."""
        pair, per_client = self._pair(user, client), ("client", client)
        with self._cond:
            self._admit([(per_client, "too many failed attempts from this client"),
                         (pair, f"too many failed verify attempts for {user!r} from this client")],
                        (pair, per_client))
        return Ticket((pair, per_client), pair)

    def acquire_identify(self, client: str) -> Ticket:
        """Reserve one identify from ``client``; refused while the client is locked out of any user."""
        per_client = ("client", client)
        suffix = f"\0{client}"
        locked = "this client is locked out of a user: identify waits too"
        with self._cond:
            pairs = [(key, locked) for key in self._failures if key[0] == "pair" and key[1].endswith(suffix)]
            self._admit([(per_client, "too many failed attempts from this client"), *pairs], (per_client,))
        return Ticket((per_client,), None)

    def release(self, ticket: Ticket, outcome: str) -> None:
        """``outcome``: "accepted" (clears the pair), "failed" (counts) or "error" (no decision made)."""
        if outcome not in ("accepted", "failed", "error"):
            raise ValueError(f"unknown outcome {outcome!r}")
        now = self._clock()
        with self._cond:
            for key in ticket.keys:
                left = self._pending.get(key, 0) - 1
                if left > 0:
                    self._pending[key] = left
                else:
                    self._pending.pop(key, None)
                if outcome == "failed":
                    self._failures.setdefault(key, deque()).append(now)
            if outcome == "accepted" and ticket.pair is not None:
                self._failures.pop(ticket.pair, None)
            self._cond.notify_all()

    def failures(self, key_user: str | None, client: str) -> int:
        """Recorded failures in the window for (user, client), or for the client when user is None."""
        key = ("client", client) if key_user is None else self._pair(key_user, client)
        with self._cond:
            return len(self._log(key, self._clock()))
