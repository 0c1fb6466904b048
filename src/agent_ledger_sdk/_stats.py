"""Counters of what the helpers sent, failed to send and dropped; rate-limited warnings; internal errors.

An *internal error* is a bug of this SDK caught by its fail-open guards: the
user's code carries on, the error is logged at WARNING (rate limited), and
under pytest with this package's plugin it fails the running test, so that
our own suite (and yours) sees it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger("agent_ledger_sdk")

WARNING_INTERVAL = 60.0  # seconds between two warnings of the same kind


@dataclass(frozen=True)
class LedgerStats:
    """A snapshot of ``ledger.stats``.

    Attributes:
        sent: events the ledger accepted.
        failed: events the ledger did not accept (refused by a guardrail, a revoked key, an unknown session).
        dropped: events given up: past the memory and journal bounds, session never started, redact= dropped it.
        queued: events waiting in memory for the background sender.
        rejected: events not recorded because they were invalid (logged with the field and the fix).
        journaled_bytes: bytes waiting in the on-disk journal.
    """

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    queued: int = 0
    rejected: int = 0
    journaled_bytes: int = 0


class Counters:
    """The live counters behind ``ledger.stats``, updated by the sender and the inline path."""

    __slots__ = ("_lock", "dropped", "failed", "rejected", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.rejected = 0
        self._lock = threading.Lock()

    def add(self, *, sent: int = 0, failed: int = 0, dropped: int = 0, rejected: int = 0) -> None:
        with self._lock:
            self.sent += sent
            self.failed += failed
            self.dropped += dropped
            self.rejected += rejected


class RateLimitedWarnings:
    """Log a warning of each kind at most once per :data:`WARNING_INTERVAL`, saying how many were held back."""

    def __init__(self, interval: float = WARNING_INTERVAL) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            held_back = self._suppressed.pop(kind, 0)
        if held_back:
            message += " (%d similar warnings held back)"
            args = (*args, held_back)
        logger.warning(message, *args)


_internal_warnings = RateLimitedWarnings()
# Set by the pytest plugin (agent_ledger_sdk.testing): internal errors collected here fail the test.
internal_errors: list[str] | None = None


def internal_error(where: str, exc: BaseException) -> None:
    """Report a bug of this SDK caught by a fail-open guard: logged at WARNING, and failing tests under pytest."""
    description = f"{where}: {type(exc).__name__}: {exc}"
    collected = internal_errors
    if collected is not None:
        collected.append(description)
    _internal_warnings.warn(
        f"internal-{where}",
        "agent-ledger: internal error in %s (your code was not affected; please report it): %r",
        where,
        exc,
    )
