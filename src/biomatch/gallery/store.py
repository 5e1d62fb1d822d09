"""Template stores: where enrolled embeddings live, behind one small interface.

SQLite (one file, WAL, synchronous=FULL) is the embedded default; PostgreSQL + pgvector is
the same interface for deployments that outgrow one machine. Every write is one transaction
that also bumps a revision counter, so a crash mid-enrolment leaves either the whole
enrolment or none of it, and readers can cache the gallery until the revision changes.

Templates are tagged with a key named ``model_hash`` in the API and schema (kept for existing
stores): the service writes its ``template_key`` there, i.e. the embedder's ``embedder_id``
(hash of model + preprocessing) when it has one, else the model's SHA-256.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biomatch.errors import InputError, NotFoundError, StateError

# Anchored with \A ... \Z semantics (fullmatch below): `$` would also accept a trailing "\n".
# The same text is the `pattern` of user ids in the HTTP API's OpenAPI schema (ECMA-262 `$`
# matches only at the end there, and pydantic's Rust regex likewise).
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
USER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def validate_user_id(user: str) -> str:
    """User ids go into URLs and file listings: 1-64 chars of letters, digits, `_ . @ -`, nothing else
    (no trailing newline: the whole string must match)."""
    if not isinstance(user, str) or not USER_ID_RE.fullmatch(user):
        raise InputError(
            f"invalid user id {user!r}: use 1-64 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit"
        )
    return user


@dataclass(frozen=True)
class UserInfo:
    """One enrolled user: how many templates, from which models, since when."""

    user: str
    n_templates: int
    model_hashes: tuple[str, ...]
    created: float


@dataclass(frozen=True)
class Templates:
    """A block of templates: row i of `vectors` belongs to `users[i]` (ids are store row ids)."""

    ids: np.ndarray  # (N,) int64
    users: list[str]
    vectors: np.ndarray  # (N, dim) float32

    def __len__(self) -> int:
        return len(self.users)


def _check_vectors(vectors: np.ndarray, model_hash: str) -> np.ndarray:
    """Refuse anything that should never reach storage (validate before writing)."""
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"templates must be a non-empty (N, dim) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError("templates contain NaN or infinite values")
    if not model_hash or not isinstance(model_hash, str):
        raise InputError("a template needs the model hash of the embedder that made it")
    return np.ascontiguousarray(arr, dtype=np.float32)


class TemplateStore(ABC):
    """Users and their templates, each tagged with the key (model + preprocessing) of what made it."""

    @abstractmethod
    def add(self, user: str, vectors: np.ndarray, model_hash: str) -> list[int]:
        """Add templates for `user` (created if new) in one transaction; return their ids."""

    @abstractmethod
    def templates(self, model_hash: str, user: str | None = None) -> Templates:
        """All templates made by `model_hash` (optionally of one user), ordered by user then id."""

    @abstractmethod
    def users(self) -> list[UserInfo]:
        """Every enrolled user, sorted by id."""

    @abstractmethod
    def delete_user(self, user: str) -> int:
        """Delete a user and all their templates; return how many templates went. NotFoundError if absent."""

    @abstractmethod
    def model_hashes(self) -> dict[str, int]:
        """Template count per model hash (to explain a model mismatch)."""

    @abstractmethod
    def revision(self) -> int:
        """A counter bumped by every committed write; equal revisions mean equal contents."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def has_user(self, user: str) -> bool:
        return any(info.user == user for info in self.users())

    def __enter__(self) -> TemplateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('revision', 0), ('schema', 1);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    model_hash TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_user ON templates(user_id, model_hash);
CREATE INDEX IF NOT EXISTS templates_model ON templates(model_hash, user_id, id);
"""


class SQLiteStore(TemplateStore):
    """One SQLite file. WAL + synchronous=FULL: a committed enrolment survives a crash or power cut.

    One connection guarded by a lock, so the store can be shared by the threads of a server.
    ``create=False`` refuses a file that does not exist yet (read-only commands must not turn a
    mistyped path into a new empty gallery).
    """

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        if not create and not self.path.is_file():
            raise NotFoundError(
                f"no template store at {self.path}: check --store (only `biomatch enroll` creates a store)"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the folder of template store {self.path}: {exc.strerror or exc}") from exc
        try:
            self._conn = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(f"BEGIN IMMEDIATE;\n{_SQLITE_SCHEMA}\nCOMMIT;")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot open template store {self.path}: {exc}") from exc
        self._lock = threading.RLock()

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            # IMMEDIATE takes the write lock now, so two writers never interleave.
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, *rest: object) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _write(self) -> SQLiteStore._Tx:
        return SQLiteStore._Tx(self._conn)

    def add(self, user: str, vectors: np.ndarray, model_hash: str) -> list[int]:
        validate_user_id(user)
        arr = _check_vectors(vectors, model_hash)
        now = time.time()
        with self._lock, self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO users(user_id, created) VALUES (?, ?)", (user, now))
            ids = []
            for row in arr:
                cur = conn.execute(
                    "INSERT INTO templates(user_id, model_hash, dim, vector, created) VALUES (?,?,?,?,?)",
                    (user, model_hash, arr.shape[1], row.tobytes(), now),
                )
                ids.append(int(cur.lastrowid or 0))
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        return ids

    def templates(self, model_hash: str, user: str | None = None) -> Templates:
        sql = "SELECT id, user_id, dim, vector FROM templates WHERE model_hash = ?"
        args: tuple[Any, ...] = (model_hash,)
        if user is not None:
            sql += " AND user_id = ?"
            args += (user,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY user_id, id", args).fetchall()
        return _to_templates(rows)

    def users(self) -> list[UserInfo]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT u.user_id, u.created, COUNT(t.id), GROUP_CONCAT(DISTINCT t.model_hash) "
                "FROM users u LEFT JOIN templates t ON t.user_id = u.user_id "
                "GROUP BY u.user_id ORDER BY u.user_id"
            ).fetchall()
        return _to_user_infos(rows)

    def has_user(self, user: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user,)).fetchone() is not None

    def delete_user(self, user: str) -> int:
        with self._lock, self._write() as conn:
            if conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user,)).fetchone() is None:
                raise NotFoundError(f"unknown user {user!r}")
            n = conn.execute("DELETE FROM templates WHERE user_id = ?", (user,)).rowcount
            conn.execute("DELETE FROM users WHERE user_id = ?", (user,))
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        return int(n)

    def model_hashes(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT model_hash, COUNT(*) FROM templates GROUP BY model_hash"
            ).fetchall()
        return {h: int(n) for h, n in rows}

    def revision(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0])

    def integrity_check(self) -> str:
        """SQLite's own consistency check ('ok' when the file is sound)."""
        with self._lock:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _to_user_infos(rows: list) -> list[UserInfo]:
    """(user_id, created, template count, comma-joined model hashes) rows → UserInfo, both dialects."""
    return [UserInfo(u, int(n), tuple(sorted(h.split(","))) if h else (), float(c)) for u, c, n, h in rows]


def _to_templates(rows: list[tuple[int, str, int, Any]]) -> Templates:
    """Rows of (id, user, dim, vector bytes or array) → one Templates block."""
    if not rows:
        return Templates(np.zeros(0, np.int64), [], np.zeros((0, 0), np.float32))
    dims = {int(r[2]) for r in rows}
    if len(dims) != 1:
        raise StateError(f"templates of one model have different dimensions {sorted(dims)}")
    dim = dims.pop()
    vectors = np.empty((len(rows), dim), dtype=np.float32)
    for i, r in enumerate(rows):
        vec = r[3]
        vectors[i] = np.frombuffer(vec, dtype=np.float32) if isinstance(vec, (bytes, memoryview)) else vec
    return Templates(np.array([r[0] for r in rows], np.int64), [r[1] for r in rows], vectors)


class PostgresStore(TemplateStore):
    """PostgreSQL + pgvector: the same interface, for a gallery shared by several machines.

    Vectors are stored as pgvector `vector` values (so the database can index or search them
    too); search itself stays in biomatch so results match the SQLite store exactly.

    Connections come from a ``psycopg_pool.ConnectionPool`` that checks each connection when
    it is handed out and replaces a dead one (server restart, ``pg_terminate_backend``, a
    dropped network link), so one lost connection costs no request and never wedges the store.
    """

    def __init__(self, dsn: str, create: bool = True, max_size: int = 4, timeout_s: float = 10.0) -> None:
        try:
            import psycopg
            from pgvector.psycopg import register_vector
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError as exc:  # pragma: no cover - dependency present in normal installs
            raise StateError("the PostgreSQL store needs `psycopg`, `psycopg_pool` and `pgvector`") from exc
        try:  # schema first, on a plain connection: the pool's configure step needs the `vector` type
            with psycopg.connect(dsn, autocommit=True, connect_timeout=int(timeout_s)) as conn:
                exists = conn.execute("SELECT to_regclass('biomatch_meta') IS NOT NULL").fetchone()[0]  # type: ignore[index]
                if not exists and not create:
                    raise NotFoundError(
                        "no biomatch template store in this PostgreSQL database: check --store "
                        "(only `biomatch enroll` creates a store)"
                    )
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(4242)")  # concurrent first opens
                    for sql in _PG_SCHEMA:
                        conn.execute(sql)
        except psycopg.Error as exc:
            raise StateError(f"cannot open PostgreSQL template store: {exc}") from exc
        self._pool = ConnectionPool(
            dsn, min_size=1, max_size=max_size, kwargs={"autocommit": True}, configure=register_vector,
            check=ConnectionPool.check_connection, timeout=timeout_s, open=False, name="biomatch-store",
        )
        try:
            self._pool.open(wait=True, timeout=timeout_s)
        except PoolTimeout as exc:
            self._pool.close()
            raise StateError(f"cannot open PostgreSQL template store: {exc}") from exc
        self.dsn = dsn

    def _connection(self):  # noqa: ANN202 - a context manager yielding a checked psycopg connection
        return self._pool.connection()

    def add(self, user: str, vectors: np.ndarray, model_hash: str) -> list[int]:
        validate_user_id(user)
        arr = _check_vectors(vectors, model_hash)
        now = time.time()
        with self._connection() as conn, conn.transaction():
            conn.execute("INSERT INTO biomatch_users VALUES (%s, %s) ON CONFLICT DO NOTHING", (user, now))
            ids = []
            for row in arr:
                cur = conn.execute(
                    "INSERT INTO biomatch_templates(user_id, model_hash, dim, vector, created) "
                    "VALUES (%s,%s,%s,%s,%s) RETURNING id",
                    (user, model_hash, arr.shape[1], row, now),
                )
                ids.append(int(cur.fetchone()[0]))  # type: ignore[index]
            conn.execute("UPDATE biomatch_meta SET value = value + 1 WHERE key = 'revision'")
        return ids

    def templates(self, model_hash: str, user: str | None = None) -> Templates:
        sql = "SELECT id, user_id, dim, vector FROM biomatch_templates WHERE model_hash = %s"
        args: tuple[Any, ...] = (model_hash,)
        if user is not None:
            sql += " AND user_id = %s"
            args += (user,)
        with self._connection() as conn:
            rows = conn.execute(sql + " ORDER BY user_id, id", args).fetchall()
        return _to_templates([(r[0], r[1], r[2], _pg_array(r[3])) for r in rows])

    def users(self) -> list[UserInfo]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT u.user_id, u.created, COUNT(t.id), STRING_AGG(DISTINCT t.model_hash, ',') "
                "FROM biomatch_users u LEFT JOIN biomatch_templates t ON t.user_id = u.user_id "
                "GROUP BY u.user_id ORDER BY u.user_id COLLATE \"C\""
            ).fetchall()
        return _to_user_infos(rows)

    def has_user(self, user: str) -> bool:
        with self._connection() as conn:
            return conn.execute("SELECT 1 FROM biomatch_users WHERE user_id = %s", (user,)).fetchone() is not None

    def delete_user(self, user: str) -> int:
        with self._connection() as conn, conn.transaction():
            if not conn.execute("SELECT 1 FROM biomatch_users WHERE user_id = %s FOR UPDATE", (user,)).fetchone():
                raise NotFoundError(f"unknown user {user!r}")
            n = conn.execute("DELETE FROM biomatch_templates WHERE user_id = %s", (user,)).rowcount
            conn.execute("DELETE FROM biomatch_users WHERE user_id = %s", (user,))
            conn.execute("UPDATE biomatch_meta SET value = value + 1 WHERE key = 'revision'")
        return int(n)

    def model_hashes(self) -> dict[str, int]:
        with self._connection() as conn:
            rows = conn.execute("SELECT model_hash, COUNT(*) FROM biomatch_templates GROUP BY model_hash").fetchall()
        return {h: int(n) for h, n in rows}

    def revision(self) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT value FROM biomatch_meta WHERE key = 'revision'").fetchone()
        return int(row[0])  # type: ignore[index]

    def close(self) -> None:
        self._pool.close()


_PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS biomatch_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT INTO biomatch_meta VALUES ('revision', 0), ('schema', 1) ON CONFLICT DO NOTHING",
    "CREATE TABLE IF NOT EXISTS biomatch_users (user_id TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS biomatch_templates ("
    " id BIGSERIAL PRIMARY KEY,"
    " user_id TEXT NOT NULL REFERENCES biomatch_users(user_id) ON DELETE CASCADE,"
    " model_hash TEXT NOT NULL, dim INTEGER NOT NULL, vector vector NOT NULL,"
    " created DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS biomatch_templates_model ON biomatch_templates(model_hash, user_id, id)",
)


def _pg_array(value: Any) -> np.ndarray:
    """pgvector's psycopg adapter returns a `Vector` (or an ndarray in older versions)."""
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else value, dtype=np.float32)


def open_store(location: str | Path, create: bool = True) -> TemplateStore:
    """A `postgresql://` URI opens PostgresStore; anything else is a SQLite file path.

    ``create=False``: NotFoundError when no store exists there yet (read-only callers).
    """
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text, create=create)
    return SQLiteStore(text, create=create)
