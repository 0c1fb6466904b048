"""The instrumentation of one client: its settings, its event pipeline, its delivery, its counters.

An :class:`AgentLedgerClient` *holds* one :class:`Instrumentation`, built over
the client's HTTP I/O; nothing here calls back into the client. Data flows
one way::

    session / tool / llm_call  (``_instrument_*``: time the call, take a step and a span, snapshot values)
      -> delivery              (``_delivery``: inline, background via ``_sender`` and ``_journal``, or a test capture)
      -> pipeline              (``_pipeline``: capture switch, redaction, checks, encoding)
      -> LedgerIO              (``_http``: the ledger's three calls, with idempotency keys)

Every telemetry fault is caught, logged (rate limited) on the
``agent_ledger_sdk`` logger and counted; only :class:`BudgetGuardrailError` is
let through, and only from inline delivery, whose caller can still act on it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from . import _lifecycle
from ._budget import Budgets, GuardrailLatch
from ._constants import AGENT_NAME_ENV, CAPTURE_CONTENT_ENV, ENABLED_ENV, OTEL_ENV
from ._delivery import NULL_DELIVERY, BackgroundDelivery, Delivery, InlineDelivery
from ._exceptions import APIStatusError, BudgetGuardrailError, describe_error
from ._journal import DEFAULT_MAX_JOURNAL_BYTES, Journal
from ._pipeline import Pipeline, Redactor
from ._sender import DEFAULT_MAX_QUEUE_BYTES, DEFAULT_RETRY_WINDOW, Sender
from ._session import SessionHandle
from ._stats import Counters, LedgerStats, RateLimitedWarnings, internal_error, logger

if TYPE_CHECKING:
    from ._http import LedgerIO, LoopBridge
    from ._otel import OtelBridge

# Seconds ``close()`` waits for queued events to go out.
CLOSE_FLUSH_TIMEOUT = 5.0

JournalSetting = Union[str, Path, bool, None]

# Set by agent_ledger_sdk.testing: while a capture is active, new sessions record into it.
capture_override: Optional[Delivery] = None


def env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def default_journal_dir(base_url: str, api_key: str) -> Path:
    """One journal per ledger and key: what it holds is delivered only with the key that recorded it."""
    from ._local_key import state_dir

    identity = hashlib.sha256(f"{base_url}\0{api_key}".encode()).hexdigest()[:16]
    return state_dir() / "journal" / identity


class Instrumentation:
    """The helpers' state for one client."""

    def __init__(
        self,
        *,
        io: LedgerIO,
        sender_io: LedgerIO,
        aio: Optional[LoopBridge],
        connections: list[Any],
        identity: tuple[str, str],
        batching: bool,
        enabled: Optional[bool],
        capture_content: Optional[bool],
        redact: Optional[Redactor],
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_queue_events: Optional[int] = None,
        journal: JournalSetting = None,
        max_journal_bytes: int = DEFAULT_MAX_JOURNAL_BYTES,
        retry_window: float = DEFAULT_RETRY_WINDOW,
        sample_rate: float = 1.0,
        handle_sigterm: bool = True,
        configured: bool = True,
        agent_name: Optional[str] = None,
        otel: Any = None,
    ) -> None:
        if max_queue_bytes < 1024:
            raise ValueError(f"max_queue_bytes must be at least 1024, got {max_queue_bytes}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {sample_rate}")
        if retry_window < 0:
            raise ValueError(f"retry_window must be >= 0 seconds, got {retry_window}")
        if agent_name is not None and (not isinstance(agent_name, str) or not agent_name.strip()):
            raise ValueError(
                f'agent_name must be a non-empty string, e.g. agent_name="support-bot", got {agent_name!r}'
            )
        self.agent_name = agent_name  # of the implicit session; see implicit_agent_name()
        self._implicit: Optional[SessionHandle] = None
        self._implicit_lock = threading.Lock()
        self.enabled = env_flag(ENABLED_ENV, True) if enabled is None else enabled  # the kill switch
        # No key: wrappers stay in place (a test capture or a local_ledger fixture can still
        # record through them), but nothing is sent.
        self.configured = configured
        self.capture_content = env_flag(CAPTURE_CONTENT_ENV, True) if capture_content is None else capture_content
        self.sample_rate = sample_rate
        self.handle_sigterm = handle_sigterm
        self.counters = Counters()
        self.warnings = RateLimitedWarnings()
        self.otel: Optional[OtelBridge] = otel_bridge(otel)
        self.budgets = Budgets(self.warnings)
        self.io = io  # for the budget's reservation round trip, on the caller's thread
        self.pipeline = Pipeline(
            capture_content=self.capture_content, redact=redact, counters=self.counters, warnings=self.warnings
        )
        self.pipeline.spans = self.otel
        self._sender_io = sender_io
        self._aio = aio
        self._connections = connections
        self._max_queue_bytes = max_queue_bytes
        self._max_queue_events = max_queue_events
        self._retry_window = retry_window
        if journal is False:
            self._journal_dir: Optional[Path] = None
        elif journal is None or journal is True:
            self._journal_dir = default_journal_dir(*identity)
        else:
            self._journal_dir = Path(journal).expanduser()
        self._max_journal_bytes = max_journal_bytes
        self._sender: Optional[Sender] = None
        self._sender_lock = threading.Lock()
        self.open_sessions: weakref.WeakSet[SessionHandle] = weakref.WeakSet()
        self.background = BackgroundDelivery(self)
        self.default_delivery: Delivery = self.background if batching else InlineDelivery(self, io, aio)
        _lifecycle.live.add(self)
        if self.enabled and self.configured and _has_journal_files(self._journal_dir):
            self.sender.start()  # what an earlier run left in the journal is delivered now

    @property
    def latch(self) -> GuardrailLatch:
        return self.budgets.latch

    # -- the sender, made on first use -------------------------------------

    @property
    def sender(self) -> Sender:
        sender = self._sender
        if sender is None:
            with self._sender_lock:
                sender = self._sender
                if sender is None:
                    journal = Journal(self._journal_dir, self._max_journal_bytes) if self._journal_dir else None
                    sender = self._sender = Sender(
                        self,
                        lambda: self._sender_io,
                        journal,
                        max_queue_bytes=self._max_queue_bytes,
                        max_queue_events=self._max_queue_events,
                        retry_window=self._retry_window,
                    )
                    # The agent's hot path: straight to the queue, one call less per event.
                    self.background.emit = sender.submit_event  # type: ignore[method-assign]
        return sender

    def _sender_started(self) -> None:
        if self.handle_sigterm:
            _lifecycle.install_sigterm_handler()

    def note_loop(self) -> None:
        if self._aio is not None:
            self._aio.note_loop()

    # -- sessions --------------------------------------------------------

    def delivery(self) -> Optional[Delivery]:
        """Where a new session records: the active test capture, else this client's delivery (None if off)."""
        override = capture_override
        if override is not None:
            return override
        return self.default_delivery if self.enabled and self.configured else None

    def new_session(
        self,
        delivery: Delivery,
        agent_name: str,
        parent: Optional[SessionHandle],
        user_id: Optional[str],
        tags: Optional[list[str]],
        metadata: Optional[dict[str, Any]],
        max_cost_usd: Optional[float] = None,
    ) -> SessionHandle:
        sampled = True
        if self.sample_rate < 1.0:
            import random

            sampled = random.random() < self.sample_rate
        # A delivery of another client (a local ledger's redirect) records with that client's settings.
        owner = getattr(delivery, "owner", None) or self
        handle = SessionHandle(
            agent_name,
            delivery,
            owner,
            user_id=user_id,
            tags=tags,
            metadata=metadata,
            parent=parent,
            sampled=sampled,
            max_cost_usd=max_cost_usd,
        )
        if delivery is not NULL_DELIVERY:
            owner.open_sessions.add(handle)
            handle._otel = owner.otel
        return handle

    def implicit_agent_name(self) -> str:
        """The agent of calls made outside any session: ``agent_name=``, ``AGENT_LEDGER_AGENT_NAME``, the script."""
        return self.agent_name or os.environ.get(AGENT_NAME_ENV, "").strip() or script_name()

    def implicit_session(self) -> Optional[SessionHandle]:
        """The session that records calls made outside any session (auto-instrumented ones), or None if off.

        One per client and process, started on first use and ended (as a success)
        when the client closes or the process exits.
        """
        delivery = self.delivery()
        if delivery is None:
            return None
        handle = self._implicit
        if handle is not None and handle._delivery is delivery and not handle.ended:
            return handle
        with self._implicit_lock:
            handle = self._implicit
            if handle is not None and handle._delivery is delivery and not handle.ended:
                return handle
            if handle is not None:
                self._end_implicit()  # a test capture began or ended: the old one is over
            handle = self.new_session(delivery, self.implicit_agent_name(), None, None, None, {"implicitSession": True})
            try:
                delivery.start(handle)
            except Exception as exc:
                internal_error("session start", exc)
            self._implicit = handle
        return handle

    def _end_implicit(self) -> None:
        handle, self._implicit = self._implicit, None
        if handle is None or handle.ended:
            return
        handle.ended = True
        try:
            delivery = handle._delivery
            if isinstance(delivery, InlineDelivery):
                delivery = self.background  # never block exit on a request
            delivery.end(handle, "success", None)
        except Exception as exc:
            internal_error("session end", exc)

    def end_open_sessions(self, reason: str) -> None:
        self._end_implicit()  # calls outside any session: their session ends as it should, not as a failure
        for handle in list(self.open_sessions):
            if not handle.ended:
                handle.ended = True
                delivery = handle._delivery
                if isinstance(delivery, InlineDelivery):
                    delivery = self.background  # never block exit on one request per session
                if delivery is self.background:
                    delivery.end(handle, "error", reason)

    # -- outcomes, reported by delivery ------------------------------------

    def sent(self, handle: Any, encoded: list[str], answer: Any = None) -> None:
        """``encoded`` events of ``handle`` were accepted; ``answer``: the ledger's reply."""
        self.counters.add(sent=len(encoded))
        if self.latch and any('"type":"llm_call"' in e for e in encoded):  # rare path
            self.latch.clear(handle.agent_name)  # the ledger accepts this agent's spend again
        if self.otel is not None:
            self.otel.delivered(handle, encoded, answer)

    def send_failed(self, handle: Any, encoded: list[str], exc: BaseException) -> None:
        if self.otel is not None:
            self.otel.failed(handle, encoded, exc)
        if isinstance(exc, BudgetGuardrailError):
            self.latch.trip(handle.agent_name, exc)
        if isinstance(exc, APIStatusError) and exc.status_code in (400, 422):
            for _ in encoded:
                self.pipeline.reject(f"a {handle.agent_name!r}", f"the ledger refused it: {exc}")
            return
        self.counters.add(failed=len(encoded))
        self.warnings.warn(
            f"send-{type(exc).__name__}",
            "agent-ledger: %d events of agent %r were not recorded: %s",
            len(encoded),
            handle.agent_name,
            describe_error(exc),
        )

    def session_failed(self, handle: SessionHandle, exc: BaseException) -> None:
        self.warnings.warn(
            "start",
            "agent-ledger: could not start a session for agent %r (%s); its events will be dropped",
            handle.agent_name,
            describe_error(exc),
        )

    def events_orphaned(self, handle: SessionHandle, count: int) -> None:
        if self.otel is not None:
            self.otel.abandon(handle)
        self.counters.add(dropped=count)
        self.warnings.warn(
            "no-session",
            "agent-ledger: %d events of agent %r dropped: its session could not be started",
            count,
            handle.agent_name,
        )

    def end_failed(self, handle: SessionHandle, exc: BaseException) -> None:
        self.warnings.warn(
            "end",
            "agent-ledger: could not end the session of agent %r: %s",
            handle.agent_name,
            describe_error(exc),
        )

    # -- flushing, stats, process lifecycle ---------------------------------

    def stats(self) -> LedgerStats:
        c = self.counters
        sender = self._sender
        queued = sender.queued if sender is not None else 0
        journaled = sender.journal.pending_bytes if sender is not None and sender.journal is not None else 0
        return LedgerStats(
            sent=c.sent,
            failed=c.failed,
            dropped=c.dropped,
            queued=queued,
            rejected=c.rejected,
            journaled_bytes=journaled,
        )

    def flush(self, timeout: Optional[float]) -> int:
        left = self._sender.flush(timeout) if self._sender is not None else 0
        if self.otel is not None:
            self.otel.close_waiting()  # the spans of what was sent have their price; the rest close without
        return left

    def close(self, timeout: Optional[float] = CLOSE_FLUSH_TIMEOUT) -> int:
        self._end_implicit()
        left = self._sender.close(timeout) if self._sender is not None else 0
        if self.otel is not None:
            self.otel.close_waiting()
        if left:
            kept = self.journal_remaining()
            self.warnings.warn(
                "close",
                "agent-ledger: %d queued events were not sent before close()%s",
                left,
                f"; they wait in the journal at {kept}" if kept else "",
            )
        return left

    def left(self) -> int:
        """Events and session ends not delivered yet, now (in memory, in a request or journaled)."""
        return self._sender.left() if self._sender is not None else 0

    def journal_remaining(self) -> Optional[Path]:
        """Write what is still queued to the journal; its directory if it holds anything."""
        sender = self._sender
        if sender is None or sender.journal is None:
            return None
        sender.journal_everything()
        return sender.journal.directory if sender.journal.pending_bytes else None

    def before_fork(self) -> None:
        sender = self._sender
        if sender is not None:
            sender.before_fork()

    def after_fork_in_parent(self) -> None:
        sender = self._sender
        if sender is not None:
            sender.after_fork_in_parent()

    def after_fork_in_child(self) -> None:
        sender = self._sender
        if sender is not None:
            sender.after_fork()
        self._sender_lock = threading.Lock()
        self._implicit = None  # the child's calls outside sessions get a session of their own
        if self.otel is not None:
            self.otel.after_fork()
        self._implicit_lock = threading.Lock()
        self.open_sessions = weakref.WeakSet()
        self.counters = Counters()  # the child's stats describe the child
        self.pipeline.counters = self.counters
        self.warnings = RateLimitedWarnings()
        self.pipeline.warnings = self.warnings
        self.budgets.warnings = self.warnings
        for connection in self._connections:
            connection.forget_connections()


def otel_bridge(setting: Any) -> Optional[OtelBridge]:
    """The client's OpenTelemetry spans: ``otel=True``, a tracer provider, or ``AGENT_LEDGER_OTEL=1``; else None.

    Asked for explicitly without ``opentelemetry-api`` installed, it raises; asked for by the
    environment alone, it logs a warning and the client carries on without.
    """
    explicit = setting is not None
    if setting is None:
        setting = env_flag(OTEL_ENV, False)
    if setting is False:
        return None
    if setting is not True and not callable(getattr(setting, "get_tracer", None)):
        raise TypeError(f"otel= takes True, False or an OpenTelemetry TracerProvider, got {type(setting).__name__}")
    from ._otel import INSTALL_HINT, OtelBridge  # imports opentelemetry only when a bridge is made

    try:
        return OtelBridge(None if setting is True else setting)
    except ImportError as exc:
        if explicit:
            raise ImportError(f"otel=True needs the OpenTelemetry API, which is not installed: {INSTALL_HINT}") from exc
        logger.warning(
            "agent-ledger: %s=1 but the OpenTelemetry API is not installed (%s); no spans", OTEL_ENV, INSTALL_HINT
        )
        return None


def script_name() -> str:
    """The running script's name (``agent.py`` -> ``agent``), or ``python`` for ``-c`` and the REPL."""
    import sys

    argv0 = sys.argv[0] if sys.argv else ""
    if not argv0 or argv0 in ("-c", "-m"):
        return "python"
    name = Path(argv0).stem
    if name == "__main__":  # python -m package: the package's name
        name = Path(argv0).parent.name or "python"
    return name or "python"


def _has_journal_files(directory: Optional[Path]) -> bool:
    if directory is None:
        return False
    try:
        return any(name.endswith(".jsonl") for name in os.listdir(directory))
    except OSError:
        return False
