"""Unlock and identify from the command line: enroll, verify, identify, users, serve."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

StoreOpt = Annotated[Optional[str], typer.Option("--store", help="SQLite file or postgresql:// URI; only enroll and serve create a new one [default: $BIOMATCH_HOME/gallery.db or ~/.biomatch/gallery.db]")]
EmbedderOpt = Annotated[str, typer.Option("--embedder", help="face | face-crop | face-int8 | pixels | module:factory")]
def _check_threshold(value: Optional[float]) -> Optional[float]:
    """--threshold is a cosine similarity: refuse anything outside [-1, 1] (or not a number)."""
    if value is not None and not (-1.0 <= value <= 1.0):  # also False for NaN
        raise typer.BadParameter(
            f"{value} is not a cosine similarity: use a number between -1 and 1 (accept when similarity >= it)"
        )
    return value


ThresholdOpt = Annotated[Optional[float], typer.Option("--threshold", callback=_check_threshold, help="accept when the cosine similarity (-1..1, higher = more alike) is >= this; overrides the calibrated file")]
ThresholdFileOpt = Annotated[Optional[Path], typer.Option("--threshold-file", help="calibrated threshold artifact [default: the one beside the model]")]
PolicyOpt = Annotated[str, typer.Option("--policy", help="mean | max similarity over a user's templates")]
SearchOpt = Annotated[str, typer.Option("--search", help="exact | numpy | flat | ivf | hnsw")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _service(store, embedder, threshold, threshold_file, policy="mean", search="exact", rescore="none", rescore_options=None, **kw):  # noqa: ANN001, ANN003, ANN202, E501
    from biomatch.gallery.setup import build_service

    return build_service(store, embedder, threshold, threshold_file, policy, search, rescore, rescore_options, **kw)  # type: ignore[arg-type]


def _store(store: str | None, create: bool = False):  # noqa: ANN202
    """Open the store; read-only commands (create=False) refuse a store that does not exist."""
    from biomatch.gallery.setup import default_store_path
    from biomatch.gallery.store import open_store

    return open_store(store or default_store_path(), create=create)


def _where(store: str | None) -> str:
    from biomatch.gallery.setup import default_store_path

    text = str(store or default_store_path())
    if "://" in text:  # never echo a password
        from urllib.parse import urlsplit

        parts = urlsplit(text)
        return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"
    return str(Path(text).expanduser())


def _print_json(obj: object) -> None:
    import json

    typer.echo(json.dumps(obj, indent=2))


def register(app: typer.Typer) -> None:
    """Add enroll / verify / identify / users / serve to the app."""

    @app.command()
    def enroll(
        user: Annotated[str, typer.Argument(help="user id")],
        images: Annotated[list[Path], typer.Argument(help="one or more images of the user")],
        store: StoreOpt = None,
        embedder: EmbedderOpt = "face",
    ) -> None:
        """Enrol USER from IMAGES (added to their templates; nothing is stored if any image fails).

        Creates the template store if it does not exist yet, and says where it writes.
        """
        from biomatch.gallery.service import GalleryService
        from biomatch.gallery.setup import load_embedder
        from biomatch.gallery.store import validate_user_id

        validate_user_id(user)
        emb = load_embedder(embedder)
        where = _where(store)
        new = "://" not in where and not Path(where).exists()
        db = _store(store, create=True)
        try:
            res = GalleryService(emb, db, threshold=0.0).enroll(user, images)  # threshold unused here
        except BaseException:
            db.close()
            if new:  # a failed first enrolment leaves no empty store behind
                for suffix in ("", "-wal", "-shm"):
                    Path(where + suffix).unlink(missing_ok=True)
            raise
        db.close()
        typer.echo(f"enrolled {res.user}: {res.added} template(s) added, {res.total} in total")
        typer.echo(f"{'created template store' if new else 'template store'}: {where}")

    @app.command()
    def verify(
        user: Annotated[str, typer.Argument(help="user id")],
        image: Annotated[Path, typer.Argument(help="probe image")],
        store: StoreOpt = None,
        embedder: EmbedderOpt = "face",
        threshold: ThresholdOpt = None,
        threshold_file: ThresholdFileOpt = None,
        policy: PolicyOpt = "mean",
        json: JsonOpt = False,
    ) -> None:
        """Unlock: accept or reject IMAGE as USER. Exit code 0 = accept, 1 = reject.

        Prints the cosine similarity (-1..1, higher = more alike) and the threshold it must reach.
        """
        res = _service(store, embedder, threshold, threshold_file, policy).verify(user, image)
        if json:
            _print_json({"user": res.user, "accepted": res.accepted, "similarity": res.similarity,
                         "threshold": res.threshold})
        else:
            verdict = "accept" if res.accepted else "reject"
            typer.echo(f"{verdict} {res.user}: similarity {res.similarity:.4f} (accept at >= {res.threshold:.4f})")
        if not res.accepted:
            raise SystemExit(1)  # typer.Exit's code is dropped in non-standalone mode

    @app.command()
    def identify(
        image: Annotated[Path, typer.Argument(help="probe image")],
        k: Annotated[int, typer.Option("--k", "-k", min=1, max=100, help="candidates to list")] = 5,
        store: StoreOpt = None,
        embedder: EmbedderOpt = "face",
        threshold: ThresholdOpt = None,
        threshold_file: ThresholdFileOpt = None,
        policy: PolicyOpt = "mean",
        search: SearchOpt = "exact",
        rescore: Annotated[str, typer.Option("--rescore", help="none | rsm: re-rank the shortlist by RSM (references = enrolled templates)")] = "none",
        rsm_m: Annotated[int, typer.Option("--rsm-m", help="RSM: references drawn from the enrolled templates (0 = all)")] = 30,
        rsm_alpha: Annotated[float, typer.Option("--rsm-alpha", help="RSM: weight of the direct dissimilarity")] = 1.0,
        rsm_seed: Annotated[int, typer.Option("--rsm-seed", help="RSM: seed of the reference draw")] = 0,
        shortlist: Annotated[int, typer.Option("--shortlist", help="RSM: how many top cosine candidates to re-rank")] = 10,
        json: JsonOpt = False,
    ) -> None:
        """Identify IMAGE among all enrolled users: the best user, or "unknown", and the top k
        with their cosine similarities (accepted when the best one is >= the threshold).

        With --rescore rsm the top --shortlist users are re-ranked by RSM; accepting the best
        one still compares its cosine similarity with the threshold.
        """
        options = {"m": rsm_m or None, "alpha": rsm_alpha, "seed": rsm_seed, "shortlist": shortlist}
        svc = _service(store, embedder, threshold, threshold_file, policy, search, rescore, options)
        res = svc.identify(image, k=k)
        if json:
            _print_json({"user": res.user, "threshold": res.threshold,
                         "candidates": [{"user": m.user, "similarity": m.similarity, "rsm": m.rsm}
                                        for m in res.candidates]})
            return
        typer.echo(res.user if res.user else "unknown")
        for rank, m in enumerate(res.candidates, 1):
            extra = f"  rsm {m.rsm:.4f}" if m.rsm is not None else ""
            typer.echo(f"  {rank}. {m.user}  similarity {m.similarity:.4f}{extra}")

    users_app = typer.Typer(help="List or delete enrolled users.", no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(users_app, name="users")

    @users_app.command("list")
    def users_list(store: StoreOpt = None, json: JsonOpt = False) -> None:
        """List enrolled users with their template counts."""
        infos = _store(store, create=False).users()
        if json:
            _print_json([{"user": u.user, "templates": u.n_templates, "models": list(u.model_hashes)} for u in infos])
            return
        if not infos:
            typer.echo("no users enrolled")
        for u in infos:
            models = ", ".join(h[:12] for h in u.model_hashes)
            typer.echo(f"{u.user}\t{u.n_templates} template(s)\tembedder {models}")

    @users_app.command("delete")
    def users_delete(user: Annotated[str, typer.Argument(help="user id")], store: StoreOpt = None) -> None:
        """Delete USER and all their templates."""
        from biomatch.gallery.store import validate_user_id

        n = _store(store, create=False).delete_user(validate_user_id(user))
        typer.echo(f"deleted {user} ({n} template(s))")

    @app.command()
    def serve(
        host: Annotated[str, typer.Option(help="bind address (loopback by default)")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
        token: Annotated[Optional[str], typer.Option(help="bearer token for enrol, delete, identify and listing users [default: $BIOMATCH_TOKEN, else a random one, printed]")] = None,
        store: StoreOpt = None,
        embedder: EmbedderOpt = "face",
        threshold: ThresholdOpt = None,
        threshold_file: ThresholdFileOpt = None,
        policy: PolicyOpt = "mean",
        search: SearchOpt = "exact",
        micro_batch: Annotated[bool, typer.Option("--micro-batch/--no-micro-batch", help="embed concurrent requests together, one model call per batch (on by default: 88 vs 74 verify req/s with 200 clients on an idle 2-core machine; see BENCHMARKS.md, service_load)")] = True,
        threads: Annotated[int, typer.Option(min=1, max=64, help="threads of the face model (onnxruntime intra-op)")] = 1,
        batch_max: Annotated[int, typer.Option(min=1, max=256, help="micro-batching: most images in one model call")] = 8,
        batch_workers: Annotated[int, typer.Option(min=1, max=64, help="micro-batching: model calls running at once")] = 2,
        open_reads: Annotated[bool, typer.Option("--open-reads", help="let anyone identify and list users without the token (not for deployments)")] = False,
    ) -> None:
        """Serve the HTTP API (OpenAPI docs at /docs) and the web page at /.

        Creates the template store if it does not exist. The port is bound before anything
        is printed, so a busy port is one clear error.
        """
        import secrets
        import socket

        import uvicorn

        from biomatch.errors import StateError
        from biomatch.server import create_app

        svc = _service(store, embedder, threshold, threshold_file, policy, search, micro_batch=micro_batch,
                       threads=threads, create=True, batch_max=batch_max, batch_workers=batch_workers)
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except OSError as exc:
            raise StateError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        token = token or os.environ.get("BIOMATCH_TOKEN")
        if not token:
            token = secrets.token_urlsafe(16)
            typer.echo(f"admin token (enrol, delete, identify, users): {token}")
        typer.echo(f"template store: {_where(store)}")
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"serving on http://{shown}:{port}/  (API docs: /docs)", )
        app_ = create_app(svc, token=token, protect_reads=not open_reads)
        server = uvicorn.Server(uvicorn.Config(app_, log_level="warning"))
        try:
            server.run(sockets=[sock])
        finally:
            svc.close()
