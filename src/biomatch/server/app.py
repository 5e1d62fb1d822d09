"""HTTP API for unlock and identification: FastAPI over a GalleryService.

Every error is JSON `{"error": <kind>, "detail": <message for a person>}`. Enrol and delete
need the bearer token; uploads are bounded in bytes, pixels and format; repeated failed
verify attempts against one user are throttled (429) so the API is no oracle for guessing.
"""

from __future__ import annotations

import hmac
import io
import threading
import time
from collections import deque
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from biomatch.data.images import load_image
from biomatch.errors import BiomatchError, InputError, NotFoundError, StateError
from biomatch.gallery.service import GalleryService

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})
MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding


class ApiError(Exception):
    """An HTTP-level refusal (auth, size, rate limit) with its status and JSON kind."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers


class FailedAttempts:
    """Sliding-window count of rejected verify attempts per user (thread-safe)."""

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures, self.window_s = max_failures, window_s
        self._log: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, user: str, now: float | None = None) -> float:
        """Seconds until `user` may try again (0 when not locked)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            log = self._log.get(user)
            if not log:
                return 0.0
            while log and now - log[0] > self.window_s:
                log.popleft()
            return self.window_s - (now - log[0]) if len(log) >= self.max_failures else 0.0

    def record(self, user: str, accepted: bool) -> None:
        with self._lock:
            if accepted:
                self._log.pop(user, None)
            else:
                log = self._log.setdefault(user, deque())
                log.append(time.monotonic())
                while len(log) > self.max_failures:
                    log.popleft()


def _error(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def create_app(
    service: GalleryService,
    token: str | None = None,
    *,
    max_upload_bytes: int = 8 << 20,
    max_files: int = 20,
    max_failed_verifies: int = 5,
    failure_window_s: float = 300.0,
) -> FastAPI:
    """The app. `token=None` leaves enrol/delete open: only for tests and local demos."""
    app = FastAPI(
        title="biomatch unlock & identify",
        version="1",
        description="Enrol users from a few images, verify (unlock) one user, identify among all users.",
    )
    failures = FailedAttempts(max_failed_verifies, failure_window_s)
    app.state.service, app.state.failures = service, failures

    @app.exception_handler(BiomatchError)
    async def _biomatch_error(_: Request, exc: BiomatchError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, StateError) else 400
        return _error(status, type(exc).__name__, str(exc))

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.kind, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
            parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        return _error(422, "ValidationError", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "HTTPError", str(exc.detail))

    @app.middleware("http")
    async def _body_limit(request: Request, call_next: Any) -> Any:
        """Refuse oversized bodies from their header, before any multipart parsing."""
        if request.method in ("POST", "PUT"):
            length = request.headers.get("content-length")
            if length is None:
                return _error(411, "LengthRequired", "send a Content-Length header")
            if not length.isdigit() or int(length) > max_upload_bytes * max_files + (64 << 10):
                return _error(413, "PayloadTooLarge", f"request body over the limit ({length} bytes)")
        return await call_next(request)

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "Unauthorized", "enrolment and deletion need 'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": "Bearer"})

    def read_image(upload: UploadFile) -> Image.Image:
        """Bounded read, format whitelist, pixel bound, then a full decode (clear error if corrupt)."""
        name = upload.filename or "upload"
        data = upload.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise ApiError(413, "PayloadTooLarge", f"{name}: file over {max_upload_bytes} bytes")
        if not data:
            raise InputError(f"{name}: empty file")
        try:
            with Image.open(io.BytesIO(data)) as probe:
                fmt, (w, h) = probe.format, probe.size
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for junk
            raise InputError(f"{name}: not a readable image ({exc})") from exc
        if fmt not in ALLOWED_FORMATS:
            raise ApiError(415, "UnsupportedMediaType",
                           f"{name}: format {fmt} not accepted; use {', '.join(sorted(ALLOWED_FORMATS))}")
        if w * h > MAX_PIXELS:
            raise InputError(f"{name}: {w}x{h} pixels is over the limit of {MAX_PIXELS}")
        try:
            return load_image(data)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from exc

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness plus what the service runs: embedder, model hash, threshold, policy."""
        emb = service.embedder
        return {"status": "ok", "embedder": emb.name, "model_hash": emb.model_hash, "dim": emb.dim,
                "threshold": service.threshold, "policy": service.policy, "search": service.search_kind,
                "users": len(service.users())}

    @app.get("/users")
    def list_users() -> dict[str, Any]:
        return {"users": [{"user": u.user, "templates": u.n_templates, "models": list(u.model_hashes),
                           "created": u.created} for u in service.users()]}

    @app.post("/users/{user_id}/templates", dependencies=[Depends(require_token)])
    def enroll(user_id: str, files: Annotated[list[UploadFile], File(description="1-20 face images")]) -> dict[str, Any]:
        """Add templates for a user (created if new). All images are checked before any is stored."""
        if len(files) > max_files:
            raise InputError(f"at most {max_files} images per request, got {len(files)}")
        images = [read_image(f) for f in files]
        res = service.enroll(user_id, images)
        return {"user": res.user, "added": res.added, "templates": res.total}

    @app.delete("/users/{user_id}", dependencies=[Depends(require_token)])
    def delete(user_id: str) -> dict[str, Any]:
        return {"user": user_id, "deleted_templates": service.delete(user_id)}

    @app.post("/verify")
    def verify(user: Annotated[str, Form()], file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        """1:1 unlock: accepted iff score ≥ threshold (cosine similarity); distance = 1 − score."""
        wait = failures.retry_after(user)
        if wait > 0:
            raise ApiError(429, "TooManyFailedAttempts",
                           f"too many failed verify attempts for {user!r}; retry in {wait:.0f} s",
                           {"Retry-After": str(int(wait) + 1)})
        res = service.verify(user, read_image(file))
        failures.record(user, res.accepted)
        return {"user": res.user, "accepted": res.accepted, "score": res.score, "distance": res.distance,
                "threshold": res.threshold}

    @app.post("/identify")
    def identify(file: Annotated[UploadFile, File()], k: Annotated[int, Form(ge=1, le=100)] = 5) -> dict[str, Any]:
        """1:N: the best user if their score clears the threshold, else "unknown"; plus the top k."""
        res = service.identify(read_image(file), k=k)
        return {"user": res.user, "label": res.user or "unknown", "threshold": res.threshold,
                "candidates": [{"user": m.user, "score": m.score, "distance": m.distance} for m in res.candidates]}

    static = resources.files("biomatch") / "server" / "static"

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app
