"""Template stores: round trips, atomic writes, revisions; SQLite always, PostgreSQL when pgserver starts."""

from __future__ import annotations

import os

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from biomatch.errors import InputError, NotFoundError, StateError
from biomatch.gallery.store import PostgresStore, SQLiteStore, TemplateStore, open_store


@pytest.fixture(scope="module")
def pg_uri() -> Iterator[str]:
    """A throwaway PostgreSQL (with pgvector) from the `pgserver` wheel; skip where it cannot start.

    The data folder is a fresh mkdtemp under /tmp, not pytest's tmp_path: run as root, pgserver
    starts PostgreSQL as an unprivileged user that cannot enter the 0700 /tmp/pytest-of-root.
    """
    import shutil
    import tempfile

    pgserver = pytest.importorskip("pgserver")
    pytest.importorskip("psycopg")
    pytest.importorskip("pgvector")
    data_dir = tempfile.mkdtemp(prefix="biomatch-pg-")
    os.chmod(data_dir, 0o755)
    try:
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    except Exception as exc:  # noqa: BLE001 - any start failure means "no server here"
        pytest.skip(f"pgserver could not start PostgreSQL: {exc}")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TemplateStore]:
    if request.param == "sqlite":
        s: TemplateStore = SQLiteStore(tmp_path / "g.db")
    else:
        uri = request.getfixturevalue("pg_uri")
        s = PostgresStore(uri)
        with s._pool.connection() as conn, conn.transaction():  # fresh tables per test
            conn.execute("TRUNCATE biomatch_templates, biomatch_users")
            conn.execute("UPDATE biomatch_meta SET value = 0 WHERE key = 'revision'")
    yield s
    s.close()


def _vecs(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_round_trip_exact_bits(store: TemplateStore) -> None:
    a, b = _vecs(3, seed=1), _vecs(2, seed=2)
    ids_a = store.add("alice", a, "h1")
    store.add("bob", b, "h1")
    store.add("bob", _vecs(1, seed=3), "h2")
    got = store.templates("h1")
    assert got.users == ["alice"] * 3 + ["bob"] * 2
    np.testing.assert_array_equal(got.vectors, np.concatenate([a, b]))  # bit-exact float32
    assert list(got.ids[:3]) == ids_a
    only_bob = store.templates("h1", user="bob")
    np.testing.assert_array_equal(only_bob.vectors, b)
    assert len(store.templates("nope")) == 0
    infos = {u.user: u for u in store.users()}
    assert infos["alice"].n_templates == 3 and infos["alice"].model_hashes == ("h1",)
    assert infos["bob"].n_templates == 3 and infos["bob"].model_hashes == ("h1", "h2")
    assert store.model_hashes() == {"h1": 5, "h2": 1}


def test_delete_and_revision(store: TemplateStore) -> None:
    r0 = store.revision()
    store.add("alice", _vecs(2), "h")
    store.add("bob", _vecs(2, seed=5), "h")
    r1 = store.revision()
    assert r1 == r0 + 2
    assert store.delete_user("alice") == 2
    assert store.revision() == r1 + 1
    assert [u.user for u in store.users()] == ["bob"]
    assert not store.has_user("alice") and store.has_user("bob")
    with pytest.raises(NotFoundError, match="unknown user 'alice'"):
        store.delete_user("alice")
    assert store.revision() == r1 + 1  # a failed delete changes nothing


@pytest.mark.parametrize(
    "user, vectors, model_hash, message",
    [
        ("", _vecs(1), "h", "invalid user id"),
        ("a/b", _vecs(1), "h", "invalid user id"),
        ("x" * 65, _vecs(1), "h", "invalid user id"),
        ("ok", np.zeros((0, 8), np.float32), "h", "non-empty"),
        ("ok", np.array([[1.0, np.nan]], np.float32), "h", "NaN"),
        ("ok", _vecs(1), "", "model hash"),
    ],
)
def test_invalid_writes_store_nothing(store: TemplateStore, user, vectors, model_hash, message) -> None:
    store.add("keep", _vecs(1), "h")
    rev = store.revision()
    with pytest.raises(InputError, match=message):
        store.add(user, vectors, model_hash)
    assert store.revision() == rev
    assert [u.user for u in store.users()] == ["keep"]


def test_sqlite_failed_transaction_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way (here: the 3rd INSERT) leaves no trace of the enrolment."""
    s = SQLiteStore(tmp_path / "g.db")
    s.add("keep", _vecs(2), "h")
    real = s._conn
    calls = {"n": 0}

    class Flaky:
        def execute(self, sql: str, *args):  # noqa: ANN001
            if sql.startswith("INSERT INTO templates"):
                calls["n"] += 1
                if calls["n"] == 3:
                    raise sqlite3.OperationalError("disk I/O error (simulated)")
            return real.execute(sql, *args)

    monkeypatch.setattr(s, "_conn", Flaky())
    with pytest.raises(sqlite3.OperationalError):
        s.add("half", _vecs(4, seed=9), "h")
    monkeypatch.setattr(s, "_conn", real)
    assert [u.user for u in s.users()] == ["keep"]
    assert len(s.templates("h")) == 2
    assert s.integrity_check() == "ok"
    s.close()


def test_sqlite_is_wal_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "g.db"
    with SQLiteStore(path) as s:
        s.add("alice", _vecs(2), "h")
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with open_store(path) as s2:
        assert [u.user for u in s2.users()] == ["alice"]
        assert s2.revision() == 1



def test_user_id_trailing_newline_refused(store: TemplateStore) -> None:
    """Issue #11.5: `^...$` accepted "carl\n" as a user distinct from "carl"."""
    with pytest.raises(InputError, match="invalid user id"):
        store.add("carl\n", _vecs(1), "h")
    assert store.users() == []


def test_read_only_open_refuses_to_create(tmp_path: Path) -> None:
    """A mistyped --store for a read-only command must not create an empty gallery."""
    missing = tmp_path / "typo" / "g.db"
    with pytest.raises(NotFoundError, match="no template store"):
        open_store(missing, create=False)
    assert not missing.parent.exists()
    with open_store(missing) as s:  # enrol creates it
        s.add("alice", _vecs(1), "h")
    with open_store(missing, create=False) as s:
        assert [u.user for u in s.users()] == ["alice"]


def test_uncreatable_store_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="cannot create the folder"):
        SQLiteStore(blocker / "sub" / "g.db")


def test_postgres_reconnects_after_backend_killed(pg_uri: str) -> None:
    """Issue #11.7: after pg_terminate_backend every call failed until a restart; the pool replaces it."""
    import psycopg

    s = PostgresStore(pg_uri)
    try:
        s.add("alice", _vecs(1), "h")
        for _ in range(2):  # twice: the replacement connection is itself killed and replaced
            with psycopg.connect(pg_uri, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                ).fetchone()[0]
            assert killed >= 1
            assert "alice" in [u.user for u in s.users()]  # the very next call succeeds
            s.revision()
    finally:
        with s._pool.connection() as conn, conn.transaction():
            conn.execute("TRUNCATE biomatch_templates, biomatch_users")
        s.close()


def test_server_answers_after_postgres_backend_killed(pg_uri: str) -> None:
    """Issue #11.7 end to end: every route, /health included, answered 500 until a restart."""
    import psycopg
    from fastapi.testclient import TestClient

    from biomatch.gallery.service import GalleryService
    from biomatch.gallery.toy import PixelEmbedder
    from biomatch.server import create_app

    s = PostgresStore(pg_uri)
    try:
        client = TestClient(create_app(GalleryService(PixelEmbedder(), s, 0.5), token="t"))
        assert client.get("/health").status_code == 200
        with psycopg.connect(pg_uri, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        r = client.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert client.get("/users", headers={"Authorization": "Bearer t"}).status_code == 200
    finally:
        s.close()
