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

  A handler of Python's runs on the main thread, between two bytecodes. A
  SIGTERM that lands just before the main thread enters a wait that only a
  signal ends (a ``multiprocessing`` pool's worker taking its next task, in
  ``sem_wait``), or that another thread takes, leaves the handler pending while
  the thread waits on: with the default disposition the process would have
  died, with ours it lived, and ``Pool.terminate()`` (the end of ``with
  Pool(...)``) hung joining it. So a watchdog thread hears of every signal
  through the wakeup fd (written by the C-level handler, whatever the thread)
  and, if the handler has not started after ``SIGTERM_NUDGE`` seconds, sends
  the main thread a SIGURG, whose handler does nothing: its wait ends with
  EINTR and the pending handler runs. A stray byte only costs a harmless SIGURG.
  Only where no wakeup fd is set (an event loop's is left alone) and SIGURG has
  its default disposition.
"""

from __future__ import annotations

import atexit
import contextlib
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
SIGTERM_NUDGE = 0.5  # seconds the watchdog gives the SIGTERM handler to start before it nudges the main thread
SIGTERM_NUDGES = 20  # then it gives up (a main thread that no signal interrupts)

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
                    # Nothing was left to journal: the request in flight at the deadline may have ended since
                    # (delivered), or there is no journal. Only what is still undelivered now is lost.
                    left = instrumentation.left()
                    if left:
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
    _watchdog_after_fork()
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
                _start_watchdog()
        except (ValueError, OSError):  # pragma: no cover - not the main interpreter
            pass


_sigterm_started = False  # the handler has started: the watchdog has nothing to do
_watchdog_fds: Optional[tuple[int, int]] = None  # its pipe: (read, write); write is the wakeup fd


def _nothing(signum: int, frame: Optional[Any]) -> None:
    """SIGURG's handler while the watchdog may nudge: it only ends the main thread's wait (EINTR)."""


def _start_watchdog() -> None:
    """Set the wakeup fd and start the watchdog (see the module's docstring). On the main thread."""
    global _watchdog_fds
    if not hasattr(signal, "SIGURG") or not hasattr(signal, "pthread_kill"):
        return  # pragma: no cover - not POSIX
    if signal.getsignal(signal.SIGURG) is not signal.SIG_DFL:
        return  # the program's own: a nudge would run it
    read_fd, write_fd = os.pipe()
    previous = -1
    try:
        os.set_blocking(write_fd, False)
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        if previous != -1:  # an event loop's, or another library's: theirs
            raise OSError("a wakeup fd is set")
        signal.signal(signal.SIGURG, _nothing)
        threading.Thread(target=_watch, args=(read_fd,), name="agent-ledger-sigterm", daemon=True).start()
    except (OSError, ValueError, RuntimeError):  # as it was: no watchdog
        with contextlib.suppress(OSError, ValueError):
            signal.set_wakeup_fd(previous)
            signal.signal(signal.SIGURG, signal.SIG_DFL)
        os.close(read_fd)
        os.close(write_fd)
        return
    _watchdog_fds = (read_fd, write_fd)


def _watch(read_fd: int) -> None:
    main = threading.main_thread()
    while True:
        try:
            received = os.read(read_fd, 512)
        except OSError:
            return
        if not received:
            return
        if signal.SIGTERM not in received:
            continue
        for _ in range(SIGTERM_NUDGES):
            time.sleep(SIGTERM_NUDGE)
            if _sigterm_started or signal.getsignal(signal.SIGTERM) is not _on_sigterm or not main.is_alive():
                break
            try:
                signal.pthread_kill(main.ident, signal.SIGURG)  # type: ignore[arg-type]
            except (OSError, ValueError):  # pragma: no cover - the main thread is gone
                return


def _watchdog_after_fork() -> None:
    """In a forked child: the parent's pipe is shared, its thread is not here. The child gets its own."""
    global _watchdog_fds
    if _watchdog_fds is None:
        return
    read_fd, write_fd = _watchdog_fds
    _watchdog_fds = None
    try:
        previous = signal.set_wakeup_fd(-1)
        if previous not in (-1, write_fd):
            signal.set_wakeup_fd(previous)  # set since by someone else
        os.close(read_fd)
        os.close(write_fd)
        if signal.getsignal(signal.SIGTERM) is _on_sigterm and signal.getsignal(signal.SIGURG) is _nothing:
            signal.signal(signal.SIGURG, signal.SIG_DFL)
            _start_watchdog()
    except (OSError, ValueError) as exc:  # pragma: no cover - not the main thread of the child
        internal_error("fork", exc)


def _on_sigterm(signum: int, frame: Optional[Any]) -> None:
    global _sigterm_started
    _sigterm_started = True
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
