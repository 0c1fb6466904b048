"""The process around the SDK: interpreter exit, fork, multiprocessing children and SIGTERM.

- **Exit**: sessions still open are ended (``error``, "Session still open at
  interpreter exit"), queued events are delivered within ``EXIT_FLUSH_TIMEOUT``
  seconds in all, and what is still queued then is written to the journal,
  for the next client with the same journal directory to deliver.
- **Fork**: the queue's locks are held across ``fork()`` so that the child
  never inherits one mid-update; the child gets a fresh queue, thread and
  connections (the parent keeps sending what it had queued). Sessions
  continued in the child keep their ids: their start is idempotent.
- **multiprocessing**: its children leave through ``os._exit()``, which skips
  ``atexit``; a multiprocessing finalizer flushes them first.
- **SIGTERM**: if the process has no handler of its own (the default
  disposition) when the first session starts on the main thread, one is
  installed that ends open sessions, delivers for up to
  ``SIGTERM_FLUSH_TIMEOUT`` seconds, journals the rest, restores the default
  and re-sends SIGTERM to the process: it still dies of SIGTERM, with the
  same exit status.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional

from ._stats import internal_error, logger

if TYPE_CHECKING:
    from ._instrumentation import Instrumentation

EXIT_FLUSH_TIMEOUT = 5.0
SIGTERM_FLUSH_TIMEOUT = 2.0

live: weakref.WeakSet[Instrumentation] = weakref.WeakSet()
exit_hook_ran = False  # after it, callers deliver what they record (see Sender.after_exit_hook)


def shut_down(reason: str, timeout: float) -> None:
    """End open sessions, deliver within ``timeout`` seconds, journal the rest."""
    deadline = time.monotonic() + timeout
    for instrumentation in list(live):
        try:
            instrumentation.end_open_sessions(reason)
        except Exception as exc:
            internal_error("exit", exc)
    for instrumentation in list(live):
        try:
            left = instrumentation.flush(max(0.0, deadline - time.monotonic()))
            if left:
                kept = instrumentation.journal_remaining()
                if kept:
                    logger.warning(
                        "agent-ledger: %d events were not delivered before exit; they wait in the journal at %s "
                        "for the next client",
                        left,
                        kept,
                    )
                else:
                    logger.warning("agent-ledger: %d events were not sent before the interpreter exited", left)
        except Exception as exc:
            internal_error("exit", exc)


def _at_exit() -> None:
    global exit_hook_ran
    try:
        shut_down("Session still open at interpreter exit", EXIT_FLUSH_TIMEOUT)
    finally:
        exit_hook_ran = True
        for instrumentation in list(live):
            sender = instrumentation._sender
            if sender is not None:
                sender.after_exit_hook()


# -- fork ---------------------------------------------------------------------


def _before_fork() -> None:
    for instrumentation in list(live):
        instrumentation.before_fork()


def _after_fork_in_parent() -> None:
    for instrumentation in list(live):
        instrumentation.after_fork_in_parent()


def _after_fork_in_child() -> None:
    from . import _stats

    _stats._internal_warnings = _stats.RateLimitedWarnings()  # its lock may have been held at the fork
    for instrumentation in list(live):
        try:
            instrumentation.after_fork_in_child()
        except Exception as exc:  # pragma: no cover - the child must live on regardless
            internal_error("fork", exc)
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        # multiprocessing clears its finalizers in the child, then runs its after-fork hooks: register there.
        util.register_after_fork(_MULTIPROCESSING_HOOK, _install_multiprocessing_finalizer)


class _Hook:
    pass


_MULTIPROCESSING_HOOK = _Hook()


def _install_multiprocessing_finalizer(_: Any) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _at_exit, exitpriority=100)


# -- SIGTERM ------------------------------------------------------------------

_sigterm_installed = False
_sigterm_lock = threading.Lock()


def install_sigterm_handler() -> None:
    """Install the SIGTERM handler if SIGTERM has its default disposition and we are on the main thread."""
    global _sigterm_installed
    if _sigterm_installed or not hasattr(signal, "SIGTERM"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    with _sigterm_lock:
        if _sigterm_installed:
            return
        _sigterm_installed = True
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # pragma: no cover - not the main interpreter
            pass


def _on_sigterm(signum: int, frame: Optional[Any]) -> None:
    released = _release_interrupted_locks()
    try:
        shut_down("Terminated by SIGTERM", SIGTERM_FLUSH_TIMEOUT)
    finally:
        for lock, state in reversed(released):
            lock._acquire_restore(state)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _release_interrupted_locks() -> list[tuple[Any, Any]]:
    """Let go of the queue's locks if the signal interrupted this thread while it held them (queueing an event).

    Else the sender thread would wait for them while the handler waits for the
    sender: nothing delivered, nothing journaled. The handler takes them back
    (``_acquire_restore``) before it returns.
    """
    released: list[tuple[Any, Any]] = []
    for instrumentation in list(live):
        sender = instrumentation._sender
        if sender is None:
            continue
        for lock in sender.locks():
            is_owned = getattr(lock, "_is_owned", None)
            if is_owned is not None and is_owned():
                released.append((lock, lock._release_save()))
    return released


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
