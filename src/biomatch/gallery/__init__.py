"""Unlock and identify: template stores, 1:N search, and the enrol/verify/identify service."""

from __future__ import annotations

from biomatch.gallery.search import ExactSearcher, FaissSearcher, Searcher, build_searcher
from biomatch.gallery.service import (
    EnrollResult,
    GalleryService,
    IdentifyResult,
    Match,
    VerifyResult,
)
from biomatch.gallery.store import PostgresStore, SQLiteStore, TemplateStore, UserInfo, open_store

__all__ = [
    "EnrollResult",
    "ExactSearcher",
    "FaissSearcher",
    "GalleryService",
    "IdentifyResult",
    "Match",
    "PostgresStore",
    "SQLiteStore",
    "Searcher",
    "TemplateStore",
    "UserInfo",
    "VerifyResult",
    "build_searcher",
    "open_store",
]
