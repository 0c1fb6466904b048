"""Counters of what the helpers sent, failed to send and dropped, and rate-limited warnings."""

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
        failed: events the ledger did not accept after retries (or refused).
        dropped: events never attempted: queue full, session never started, redaction failed.
        queued: events waiting in the background queue.
    """

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    queued: int = 0


class Counters:
    """The live counters behind ``ledger.stats``, updated by the sender and the inline path."""

    __slots__ = ("_lock", "dropped", "failed", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def add(self, *, sent: int = 0, failed: int = 0, dropped: int = 0) -> None:
        with self._lock:
            self.sent += sent
            self.failed += failed
            self.dropped += dropped


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
