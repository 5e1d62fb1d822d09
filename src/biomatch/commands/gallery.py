"""Unlock and identify from the command line: enroll, verify, identify, users, serve."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

StoreOpt = Annotated[Optional[str], typer.Option("--store", help="SQLite file or postgresql:// URI [default: $BIOMATCH_HOME/gallery.db or ~/.biomatch/gallery.db]")]
EmbedderOpt = Annotated[str, typer.Option("--embedder", help="face | face-crop | face-int8 | pixels | module:factory")]
ThresholdOpt = Annotated[Optional[float], typer.Option("--threshold", help="accept at cosine similarity >= this (overrides the calibrated file)")]
ThresholdFileOpt = Annotated[Optional[Path], typer.Option("--threshold-file", help="calibrated threshold artifact [default: the one beside the model]")]
PolicyOpt = Annotated[str, typer.Option("--policy", help="mean | max similarity over a user's templates")]
SearchOpt = Annotated[str, typer.Option("--search", help="exact | numpy | flat | ivf | hnsw")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _service(store, embedder, threshold, threshold_file, policy="mean", search="exact", rescore="none", rescore_options=None):  # noqa: ANN001, ANN202, E501
    from biomatch.gallery.setup import build_service

    return build_service(store, embedder, threshold, threshold_file, policy, search, rescore, rescore_options)  # type: ignore[arg-type]


def _store(store: str | None):  # noqa: ANN202
    from biomatch.gallery.setup import default_store_path
    from biomatch.gallery.store import open_store

    return open_store(store or default_store_path())


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
        """Enrol USER from IMAGES (added to their templates; nothing is stored if any image fails)."""
        from biomatch.gallery.service import GalleryService
        from biomatch.gallery.setup import load_embedder

        svc = GalleryService(load_embedder(embedder), _store(store), threshold=0.0)  # threshold unused here
        res = svc.enroll(user, images)
        typer.echo(f"enrolled {res.user}: {res.added} template(s) added, {res.total} in total")

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
        """Unlock: accept or reject IMAGE as USER. Exit code 0 = accept, 1 = reject."""
        res = _service(store, embedder, threshold, threshold_file, policy).verify(user, image)
        if json:
            _print_json(res.__dict__)
        else:
            verdict = "accept" if res.accepted else "reject"
            typer.echo(f"{verdict} {res.user}: distance {res.distance:.4f} (accept at <= {1 - res.threshold:.4f}; "
                       f"similarity {res.score:.4f}, threshold {res.threshold:.4f})")
        if not res.accepted:
            raise SystemExit(1)  # typer.Exit's code is dropped in non-standalone mode

    @app.command()
    def identify(
        image: Annotated[Path, typer.Argument(help="probe image")],
        k: Annotated[int, typer.Option("--k", "-k", help="candidates to list")] = 5,
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
        """Identify IMAGE among all enrolled users: the best user, or "unknown", and the top k.

        With --rescore rsm the top --shortlist users are re-ranked by RSM; accepting the best
        one still compares its cosine similarity with the threshold.
        """
        options = {"m": rsm_m or None, "alpha": rsm_alpha, "seed": rsm_seed, "shortlist": shortlist}
        svc = _service(store, embedder, threshold, threshold_file, policy, search, rescore, options)
        res = svc.identify(image, k=k)
        if json:
            _print_json({"user": res.user, "threshold": res.threshold,
                         "candidates": [m.__dict__ for m in res.candidates]})
            return
        typer.echo(res.user if res.user else "unknown")
        for rank, m in enumerate(res.candidates, 1):
            extra = f"  rsm {m.rsm:.4f}" if m.rsm is not None else ""
            typer.echo(f"  {rank}. {m.user}  distance {m.distance:.4f}{extra}")

    users_app = typer.Typer(help="List or delete enrolled users.", no_args_is_help=True)
    app.add_typer(users_app, name="users")

    @users_app.command("list")
    def users_list(store: StoreOpt = None, json: JsonOpt = False) -> None:
        """List enrolled users with their template counts."""
        infos = _store(store).users()
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

        n = _store(store).delete_user(validate_user_id(user))
        typer.echo(f"deleted {user} ({n} template(s))")

    @app.command()
    def serve(
        host: Annotated[str, typer.Option(help="bind address (loopback by default)")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port")] = 8000,
        token: Annotated[Optional[str], typer.Option(help="bearer token for enrol/delete [default: $BIOMATCH_TOKEN, else a random one, printed]")] = None,
        store: StoreOpt = None,
        embedder: EmbedderOpt = "face",
        threshold: ThresholdOpt = None,
        threshold_file: ThresholdFileOpt = None,
        policy: PolicyOpt = "mean",
        search: SearchOpt = "exact",
    ) -> None:
        """Serve the HTTP API (OpenAPI docs at /docs) and the web page at /."""
        import secrets

        import uvicorn

        from biomatch.server import create_app

        svc = _service(store, embedder, threshold, threshold_file, policy, search)
        token = token or os.environ.get("BIOMATCH_TOKEN")
        if not token:
            token = secrets.token_urlsafe(16)
            typer.echo(f"admin token (enrol/delete): {token}")
        typer.echo(f"serving on http://{host}:{port}/  (API docs: /docs)")
        uvicorn.run(create_app(svc, token=token), host=host, port=port, log_level="warning")
