"""HTTP API and web page for enrol / unlock / identify (`biomatch serve`)."""

from __future__ import annotations

from biomatch.server.app import create_app

__all__ = ["create_app"]
