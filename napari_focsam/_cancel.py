"""Cooperative cancellation: a superseded request is abandoned at the next stage boundary.

Lives at the package root so that both ``models`` and ``engine`` can use it without an upward import.
"""

from __future__ import annotations

import threading


class Cancelled(Exception):
    """Raised inside a computation whose :class:`CancelToken` was cancelled (a newer request superseded it)."""


class CancelToken:
    """A flag a caller sets to abandon a running computation; long computations poll it between stages."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("superseded by a newer request")


def check_cancel(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set; a no-op for ``None``."""
    if cancel is not None:
        cancel.raise_if_cancelled()
