"""HTTP API: every endpoint, auth, limits, rate limit, JSON errors; nothing stored on a failed request."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from biomatch.gallery.service import GalleryService
from biomatch.gallery.store import SQLiteStore
from biomatch.gallery.toy import PixelEmbedder, pattern_images
from biomatch.server import create_app

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png(identity: int, view: int = 0, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    pattern_images(identity, view + 1, seed=0)[view].save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    svc = GalleryService(PixelEmbedder(), SQLiteStore(tmp_path / "g.db"), threshold=0.5)
    return TestClient(create_app(svc, token=TOKEN, max_upload_bytes=200_000, max_failed_verifies=3))


def enrol(client: TestClient, user: str, identity: int, n: int = 2):
    files = [("files", (f"{user}{i}.png", png(identity, i), "image/png")) for i in range(n)]
    return client.post(f"/users/{user}/templates", files=files, headers=AUTH)


def test_happy_path(client: TestClient) -> None:
    assert client.get("/health").json()["users"] == 0
    r = enrol(client, "alice", 1)
    assert r.status_code == 200 and r.json() == {"user": "alice", "added": 2, "templates": 2}
    enrol(client, "bob", 2)
    users = client.get("/users", headers=AUTH).json()["users"]
    assert [(u["user"], u["templates"]) for u in users] == [("alice", 2), ("bob", 2)]
    v = client.post("/verify", data={"user": "alice"}, files={"file": ("p.png", png(1, 3), "image/png")}).json()
    assert v["accepted"] and v["similarity"] > 0.9 and v["threshold"] == 0.5 and "distance" not in v
    v = client.post("/verify", data={"user": "bob"}, files={"file": ("p.png", png(1, 3), "image/png")}).json()
    assert not v["accepted"]
    i = client.post("/identify", data={"k": "2"}, files={"file": ("p.jpg", png(2, 3, "JPEG"), "image/jpeg")},
                    headers=AUTH).json()
    assert i["user"] == "bob" and i["label"] == "bob" and [c["user"] for c in i["candidates"]] == ["bob", "alice"]
    assert i["candidates"][0]["similarity"] > 0.5 > i["candidates"][1]["similarity"]
    u = client.post("/identify", files={"file": ("p.png", png(7), "image/png")}, headers=AUTH).json()
    assert u["user"] is None and u["label"] == "unknown"
    assert client.delete("/users/bob", headers=AUTH).json() == {"user": "bob", "deleted_templates": 2}
    assert [x["user"] for x in client.get("/users", headers=AUTH).json()["users"]] == ["alice"]
    assert "/verify" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    assert "biomatch" in client.get("/").text


def _err(r, status: int, kind: str, text: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == kind and text in body["detail"], body


def test_auth(client: TestClient) -> None:
    files = [("files", ("a.png", png(1), "image/png"))]
    _err(client.post("/users/alice/templates", files=files), 401, "Unauthorized", "Bearer")
    _err(client.post("/users/alice/templates", files=files, headers={"Authorization": "Bearer nope"}),
         401, "Unauthorized", "token")
    enrol(client, "alice", 1)
    _err(client.delete("/users/alice"), 401, "Unauthorized", "Bearer")
    _err(client.get("/users"), 401, "Unauthorized", "Bearer")
    _err(client.post("/identify", files={"file": ("p.png", png(1), "image/png")}), 401, "Unauthorized", "Bearer")
    assert len(client.get("/users", headers=AUTH).json()["users"]) == 1


def test_bad_inputs_are_clear_json_and_store_nothing(client: TestClient) -> None:
    probe = {"file": ("p.png", png(1), "image/png")}
    _err(client.post("/identify", files=probe, headers=AUTH), 409, "StateError", "gallery is empty")
    _err(client.post("/verify", data={"user": "ghost"}, files=probe), 404, "NotFoundError", "unknown user 'ghost'")
    enrol(client, "alice", 1)
    corrupt = [("files", ("ok.png", png(1, 1), "image/png")), ("files", ("bad.png", png(1)[:80], "image/png"))]
    _err(client.post("/users/alice/templates", files=corrupt, headers=AUTH), 400, "InputError", "bad.png")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    _err(client.post("/users/alice/templates", files=[("files", ("a.gif", gif.getvalue(), "image/gif"))], headers=AUTH),
         415, "UnsupportedMediaType", "GIF")
    _err(client.post("/users/alice/templates", files=[("files", ("t.txt", b"hello", "text/plain"))], headers=AUTH),
         400, "InputError", "not a readable image")
    _err(client.post("/users/alice/templates", files=[("files", ("e.png", b"", "image/png"))], headers=AUTH),
         400, "InputError", "empty file")
    big = b"\x89PNG" + b"0" * 250_000
    _err(client.post("/users/alice/templates", files=[("files", ("big.png", big, "image/png"))], headers=AUTH),
         413, "PayloadTooLarge", "over")
    _err(client.post("/users/a%2Fb/templates", files=[("files", ("a.png", png(1), "image/png"))], headers=AUTH),
         400 if False else 404, "HTTPError", "Not Found")  # a slash never reaches the handler
    _err(client.post("/users/..x/templates", files=[("files", ("a.png", png(1), "image/png"))], headers=AUTH),
         422, "ValidationError", "user_id: String should match pattern")
    _err(client.post("/verify", files=probe), 422, "ValidationError", "user")
    _err(client.post("/identify", data={"k": "0"}, files=probe, headers=AUTH), 422, "ValidationError", "k")
    _err(client.delete("/users/ghost", headers=AUTH), 404, "NotFoundError", "unknown user")
    _err(client.post("/identify", content=b"x" * 10, headers={"content-length": str(10**9)}),
         413, "PayloadTooLarge", "limit")
    users = client.get("/users", headers=AUTH).json()["users"]
    assert [(u["user"], u["templates"]) for u in users] == [("alice", 2)]  # nothing stored by any failure


def test_failed_verify_rate_limit(client: TestClient) -> None:
    enrol(client, "alice", 1)
    enrol(client, "bob", 2)
    wrong = {"file": ("p.png", png(5), "image/png")}
    for _ in range(3):
        assert client.post("/verify", data={"user": "alice"}, files=wrong).json()["accepted"] is False
    r = client.post("/verify", data={"user": "alice"}, files={"file": ("p.png", png(1, 2), "image/png")})
    _err(r, 429, "TooManyFailedAttempts", "alice")  # even the genuine face waits: no oracle
    assert int(r.headers["retry-after"]) > 0
    ok = client.post("/verify", data={"user": "bob"}, files={"file": ("p.png", png(2, 2), "image/png")})
    assert ok.json()["accepted"]  # other users are not affected
