"""One error family, so the CLI and the HTTP API can turn any bad input into a clear message."""

from __future__ import annotations


class BiomatchError(Exception):
    """Base class: the message is meant for the person who gave the input."""


class InputError(BiomatchError, ValueError):
    """Bad input from the user: a path, an image, a config value, a file format."""


class NotFoundError(BiomatchError, KeyError):
    """Something named by the user does not exist (a user id, a model, a dataset)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class StateError(BiomatchError, RuntimeError):
    """The request is valid but the stored state forbids it (empty gallery, model/threshold mismatch)."""
