"""HTTP API for unlock and identification: FastAPI over a GalleryService.

Every error is JSON ``{"error": <kind>, "detail": <message for a person>}``, 422 included, and
every status a route can answer is in its OpenAPI entry. Scores are cosine similarities in
[-1, 1] (higher = more alike); verify accepts when similarity >= threshold.

Security: enrol, delete, listing users and identify need ``Authorization: Bearer <token>``
(an HTTP bearer security scheme in the OpenAPI document); verify — the unlock itself — does
not. Bodies are bounded while they stream in (biomatch.server.limits), uploads are bounded in
bytes, pixels and format, and guessing is limited per (user, client) and per client,
atomically (biomatch.server.ratelimit).
"""

import hmac
import io
import re
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Path, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from biomatch.data.images import load_image
from biomatch.errors import BiomatchError, InputError, NotFoundError, StateError
from biomatch.gallery.service import GalleryService
from biomatch.gallery.store import USER_ID_PATTERN
from biomatch.server.limits import BodyLimitMiddleware
from biomatch.server.ratelimit import AttemptLimiter, Throttled

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})
MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding
FORM_OVERHEAD = 64 << 10  # multipart boundaries and small fields around the files
_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class ApiError(Exception):
    """An HTTP-level refusal (auth, size, rate limit) with its status and JSON kind."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers


UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, min_length=1, max_length=64,
                             description="1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit")]
VerifyUser = Annotated[str, Form(pattern=USER_ID_PATTERN, min_length=1, max_length=64)]


# -- response models (the OpenAPI document is generated from these) -------------------------
class ErrorBody(BaseModel):
    error: str = Field(description="kind of error, e.g. InputError, Unauthorized, ValidationError")
    detail: str = Field(description="what was wrong, for a person")


class Health(BaseModel):
    status: str
    embedder: str
    model_hash: str
    dim: int
    threshold: float = Field(description="minimum cosine similarity to accept")
    policy: str
    search: str
    users: int


class UserOut(BaseModel):
    user: str
    templates: int
    models: list[str]
    created: float


class UserList(BaseModel):
    users: list[UserOut]


class Enrolled(BaseModel):
    user: str
    added: int
    templates: int


class Deleted(BaseModel):
    user: str
    deleted_templates: int


class Verified(BaseModel):
    user: str
    accepted: bool = Field(description="similarity >= threshold")
    similarity: float = Field(ge=-1.0, le=1.0, description="cosine similarity of the probe to the user's templates")
    threshold: float = Field(ge=-1.0, le=1.0, description="minimum cosine similarity to accept")


class Candidate(BaseModel):
    user: str
    similarity: float = Field(ge=-1.0, le=1.0)


class Identified(BaseModel):
    user: str | None = Field(description="best candidate if its similarity >= threshold, else null")
    label: str = Field(description='the user, or "unknown"')
    threshold: float
    candidates: list[Candidate]


_MEANING = {
    400: "bad input (unreadable image, too many pixels, bad form)",
    401: "missing or wrong bearer token",
    404: "unknown user",
    409: "the stored state forbids it (empty gallery, templates of another model)",
    411: "no Content-Length header",
    413: "body or file over the size limit",
    415: "image format not accepted",
    422: "request does not match this schema",
    429: "too many failed attempts (Retry-After says when to try again)",
    503: "template store unavailable",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody, "description": _MEANING[c]} for c in codes}


def _error(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": _REPR.sub("<data>", detail)}, status_code=status, headers=headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def create_app(
    service: GalleryService,
    token: str | None = None,
    *,
    max_upload_bytes: int = 8 << 20,
    max_files: int = 20,
    max_failed_verifies: int = 5,
    max_client_failures: int = 20,
    failure_window_s: float = 300.0,
    protect_reads: bool = True,
) -> FastAPI:
    """The app. ``token=None`` leaves every route open: only for tests and local demos.

    ``protect_reads``: listing users and identify need the token too (default).
    """
    app = FastAPI(
        title="biomatch unlock & identify",
        version="2",
        description=(
            "Enrol users from a few images, verify (unlock) one user, identify among all users. "
            "Scores are cosine similarities in [-1, 1]; verify accepts when similarity >= threshold."
        ),
    )
    limiter = AttemptLimiter(max_failed_verifies, max_client_failures, failure_window_s)
    app.state.service, app.state.limiter = service, limiter
    single = max_upload_bytes + FORM_OVERHEAD
    many = max_upload_bytes * max_files + FORM_OVERHEAD

    def limit_for(path: str) -> int:
        if path.startswith("/users/") and path.endswith("/templates"):
            return many
        return single if path in ("/verify", "/identify") else FORM_OVERHEAD

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)

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
        return _error(exc.status_code, "HTTPError", str(exc.detail), dict(exc.headers or {}))  # keeps 405's Allow

    _store_errors: list[type[BaseException]] = []
    try:
        import psycopg

        _store_errors.append(psycopg.OperationalError)
    except ImportError:  # pragma: no cover
        pass
    import sqlite3

    _store_errors.append(sqlite3.OperationalError)
    for err_type in _store_errors:

        @app.exception_handler(err_type)
        async def _store_down(_: Request, exc: Exception) -> JSONResponse:
            return _error(503, "StoreUnavailable", "template store unavailable; retry shortly", {"Retry-After": "1"})

    bearer = HTTPBearer(auto_error=False, description="the server's token (`biomatch serve --token`)")

    def require_token(creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> None:
        given = creds.credentials if creds is not None else ""
        if not given or not hmac.compare_digest(given.encode(), (token or "").encode()):
            raise ApiError(401, "Unauthorized", "this needs 'Authorization: Bearer <token>' with the server's token",
                           {"WWW-Authenticate": "Bearer"})

    admin = [Depends(require_token)] if token is not None else []
    reads = admin if protect_reads else []
    auth_codes = (401,) if token is not None else ()
    read_codes = auth_codes if protect_reads else ()

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
        except UnidentifiedImageError as exc:
            raise InputError(f"{name}: not a readable image (unknown or corrupt format)") from exc
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for junk
            raise InputError(f"{name}: not a readable image ({type(exc).__name__})") from exc
        if fmt not in ALLOWED_FORMATS:
            raise ApiError(415, "UnsupportedMediaType",
                           f"{name}: format {fmt} not accepted; use {', '.join(sorted(ALLOWED_FORMATS))}")
        if w * h > MAX_PIXELS:
            raise InputError(f"{name}: {w}x{h} pixels is over the limit of {MAX_PIXELS}")
        try:
            return load_image(data)
        except (InputError, Image.DecompressionBombError) as exc:
            raise InputError(f"{name}: not a readable image ({_REPR.sub('<data>', str(exc))})") from exc

    def throttled(exc: Throttled) -> ApiError:
        return ApiError(429, "TooManyFailedAttempts", f"{exc.reason}; retry in {exc.retry_after:.0f} s",
                        {"Retry-After": str(int(exc.retry_after) + 1)})

    @app.get("/health", response_model=Health, responses=_responses(503))
    def health() -> dict[str, Any]:
        """Liveness plus what the service runs: embedder, model hash, threshold, policy."""
        emb = service.embedder
        return {"status": "ok", "embedder": emb.name, "model_hash": emb.model_hash, "dim": emb.dim,
                "threshold": service.threshold, "policy": service.policy, "search": service.search_kind,
                "users": len(service.users())}

    @app.get("/users", response_model=UserList, dependencies=reads, responses=_responses(*read_codes, 503))
    def list_users() -> dict[str, Any]:
        """Every enrolled user with their template count (needs the token)."""
        return {"users": [{"user": u.user, "templates": u.n_templates, "models": list(u.model_hashes),
                           "created": u.created} for u in service.users()]}

    @app.post("/users/{user_id}/templates", response_model=Enrolled, dependencies=admin,
              responses=_responses(400, *auth_codes, 409, 411, 413, 415, 422, 503))
    def enroll(user_id: UserId,
               files: Annotated[list[UploadFile], File(min_length=1, max_length=max_files,
                                                       description=f"1-{max_files} face images")]) -> dict[str, Any]:
        """Add templates for a user (created if new). All images are checked before any is stored."""
        if len(files) > max_files:
            raise InputError(f"at most {max_files} images per request, got {len(files)}")
        images = [read_image(f) for f in files]
        res = service.enroll(user_id, images)
        return {"user": res.user, "added": res.added, "templates": res.total}

    @app.delete("/users/{user_id}", response_model=Deleted, dependencies=admin,
                responses=_responses(*auth_codes, 404, 422, 503))
    def delete(user_id: UserId) -> dict[str, Any]:
        """Delete a user and all their templates."""
        return {"user": user_id, "deleted_templates": service.delete(user_id)}

    @app.post("/verify", response_model=Verified,
              responses=_responses(400, 404, 409, 411, 413, 415, 422, 429, 503))
    def verify(request: Request,
               user: VerifyUser,
               file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        """1:1 unlock: accepted iff the cosine similarity to the user's templates >= threshold.

        Limited per (user, client) and per client: a failed attempt (rejected face or unknown
        user) counts, and attempts in flight are reserved before the face is scored.
        """
        image = read_image(file)
        try:
            ticket = limiter.acquire_verify(user, _client(request))
        except Throttled as exc:
            raise throttled(exc) from exc
        outcome = "error"
        try:
            res = service.verify(user, image)
            outcome = "accepted" if res.accepted else "failed"
        except NotFoundError:
            outcome = "failed"  # probing for user ids costs attempts too
            raise
        finally:
            limiter.release(ticket, outcome)
        return {"user": res.user, "accepted": res.accepted, "similarity": res.similarity, "threshold": res.threshold}

    @app.post("/identify", response_model=Identified, dependencies=reads,
              responses=_responses(400, *read_codes, 409, 411, 413, 415, 422, 429, 503))
    def identify(request: Request, file: Annotated[UploadFile, File()],
                 k: Annotated[int, Form(ge=1, le=100)] = 5) -> dict[str, Any]:
        """1:N: the best user if their similarity clears the threshold, else "unknown"; plus the top k.

        Needs the token; an identify that names nobody counts against the client's failure
        budget, and a client locked out of any user cannot identify until the lock expires.
        """
        image = read_image(file)
        try:
            ticket = limiter.acquire_identify(_client(request))
        except Throttled as exc:
            raise throttled(exc) from exc
        outcome = "error"
        try:
            res = service.identify(image, k=k)
            outcome = "accepted" if res.user else "failed"
        finally:
            limiter.release(ticket, outcome)
        return {"user": res.user, "label": res.user or "unknown", "threshold": res.threshold,
                "candidates": [{"user": m.user, "similarity": m.similarity} for m in res.candidates]}

    static = resources.files("biomatch") / "server" / "static"

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app
