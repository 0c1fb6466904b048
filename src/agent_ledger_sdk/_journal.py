"""The on-disk journal: where events wait when memory is full or the ledger has been down too long.

A journal is a directory of segment files, one JSON record per line, written
and read in order. Each process writes its own segments and holds an
exclusive ``flock`` on the one it is writing; a segment whose writer is gone
(the process exited or died) is *orphaned*, and the next client that starts
with the same directory claims it and delivers what it holds.

Records are what the sender would have sent, with the idempotency key it
would have used, so a record delivered twice (say, the process died between
sending and forgetting it) is recorded once by the ledger. Each record names
its session by the SDK's session key, with the ledger's id when known, and
otherwise the body that starts the session (an idempotent start: the ledger
answers with the same id every time).

The journal is bounded in bytes; past the bound, ``append`` refuses and the
caller counts the loss.

The sender reads the journal in *windows* (:meth:`Journal.read_window`) and
groups each window's records by session into large requests, whose keys are
made from the records they hold. For a crash or a retry to make the same
requests again, a window must be the same whoever reads it: it is a run of
whole lines from where the last one ended, cut by its record count and byte
bounds only, or by a *seal* line (``{"t":"w"}``) written at the end of the
segment being written when the sender reads what it holds so far: a window
never ends where the writer merely had not written yet.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process claiming, own segments only
    fcntl = None  # type: ignore[assignment]

DEFAULT_MAX_JOURNAL_BYTES = 128 * 1024 * 1024
SEGMENT_BYTES = 4 * 1024 * 1024
READ_BYTES = 1024 * 1024  # read at most this much of a segment at a time (a record is at most a batch)
SUFFIX = ".jsonl"
SEAL = b'{"t":"w"}\n'  # ends a window in a segment still being written (see read_window)


def _lock(fd: int, blocking: bool) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


class _Segment:
    """One file of the journal, held open (and locked) by a raw descriptor while this process uses it."""

    __slots__ = ("fd", "offset", "own", "path", "size")

    def __init__(self, path: Path, fd: int, size: int, own: bool = False) -> None:
        self.path = path
        self.fd = fd
        self.size = size  # bytes written
        self.offset = 0  # bytes consumed
        self.own = own  # written by this process (not a claimed orphan)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Window:
    """Consecutive whole lines of one segment, from ``start``, ``size`` bytes: the unit read and consumed."""

    __slots__ = ("lines", "segment", "size", "start")

    def __init__(self, segment: _Segment, start: int, size: int, lines: list[str]) -> None:
        self.segment = segment
        self.start = start
        self.size = size
        self.lines = lines  # without their newlines; seals left out

    @property
    def ident(self) -> tuple[str, int]:
        return (self.segment.path.name, self.start)


class Journal:
    """An append-only queue of JSON lines on disk, bounded in bytes, shared safely between processes."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_JOURNAL_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._segments: deque[_Segment] = deque()  # oldest first: claimed orphans, then our own
        self._active: Optional[_Segment] = None
        self._bytes = 0  # written and not yet consumed
        self._scanned = False

    # -- state ------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def is_empty(self) -> bool:
        if not self._scanned:
            with self._lock:
                self._scan_once()
        return self._bytes == 0

    def after_fork(self) -> None:
        """In a forked child: the parent's segments and locks stay the parent's."""
        for segment in self._segments:
            # Our copies of the parent's descriptors: open, they would keep its segments locked
            # (a flock belongs to every copy) after the parent is gone, so no client could claim them.
            segment.close()
        self._lock = threading.RLock()
        self._segments = deque()
        self._active = None
        self._bytes = 0
        self._scanned = True  # the parent's segments are live, not orphans

    # -- writing ----------------------------------------------------------

    def append(self, lines: list[str]) -> bool:
        """Write ``lines`` (JSON records without newlines), all or none; False when over the bound."""
        return self._append("".join(line + "\n" for line in lines).encode("utf-8"))

    def append_line(self, line: str) -> bool:
        """``append([line])``, with less work: a spill writes a record at a time."""
        return self._append((line + "\n").encode("utf-8"))

    def _append(self, data: bytes) -> bool:
        with self._lock:
            if not self._scanned:
                self._scan_once()
            if self._bytes + len(data) > self.max_bytes:
                return False
            segment = self._active
            if segment is None or segment.size >= SEGMENT_BYTES:
                segment = self._open_segment()
                self._segments.append(segment)
                self._active = segment
            self._write(segment, data)
            return True

    def prepend(self, lines: list[str]) -> bool:
        """Write ``lines`` ahead of what this process journaled so far (they are older), after claimed orphans.

        All or none; False when over the bound.
        """
        with self._lock:
            own = next((segment for segment in self._segments if segment.own), None)
            if own is None:
                return self.append(lines)
            data = "".join(line + "\n" for line in lines).encode("utf-8")
            if self._bytes + len(data) > self.max_bytes:
                return False
            # Named to sort just before it too, for the client that claims them if we die.
            segment = self._open_segment(int(own.path.name.split("-", 1)[0]) - 1)
            self._segments.insert(self._segments.index(own), segment)
            self._write(segment, data)
            return True

    def _write(self, segment: _Segment, data: bytes) -> None:
        written = 0
        while written < len(data):  # the OS has it once this returns: it survives our death
            written += os.write(segment.fd, data[written:])
        segment.size += len(data)
        self._bytes += len(data)

    def _open_segment(self, stamp: Optional[int] = None) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)
        stamp = time.time_ns() if stamp is None else stamp
        name = f"{stamp:020d}-{os.getpid()}-{os.urandom(3).hex()}{SUFFIX}"
        path = self.directory / name
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        _lock(fd, blocking=True)
        return _Segment(path, fd, 0, own=True)

    # -- reading ----------------------------------------------------------

    def read(self, max_records: int) -> list[tuple[dict[str, Any], int]]:
        """The oldest records (at most ``max_records``), each with its size; :meth:`consume` them once done."""
        with self._lock:
            self._scan_once()
            while self._segments:
                segment = self._segments[0]
                records = self._read_segment(segment, max_records)
                if records:
                    return records
                if segment is self._active and segment.offset < segment.size:
                    return []  # a partial line being written: nothing complete yet
                self._retire(segment)
            return []

    def _read_segment(self, segment: _Segment, max_records: int) -> list[tuple[dict[str, Any], int]]:
        wanted = READ_BYTES
        while True:  # a record longer than what was read: read more
            data = os.pread(segment.fd, wanted, segment.offset)
            if len(data) < wanted or b"\n" in data:
                break
            wanted *= 2
        records: list[tuple[dict[str, Any], int]] = []
        skipped = 0
        start = 0
        while len(records) < max_records:
            end = data.find(b"\n", start)
            if end < 0:
                break  # the end, or a torn last line of a process that died mid-write
            line = data[start : end + 1]
            start = end + 1
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append((record, len(line) + skipped))
                skipped = 0
            else:
                skipped += len(line)  # unreadable: skipped, counted with the next record
        if skipped and not records:
            segment.offset += skipped
            self._bytes -= min(skipped, self._bytes)
        return records

    def read_window(self, max_lines: int, max_bytes: int) -> Optional[Window]:
        """The oldest window of lines (None: nothing complete); :meth:`consume_window` it once delivered.

        A window is the longest run of whole lines from where the last one
        ended with at most ``max_lines`` lines (seals not counted) and, past its
        first line, at most ``max_bytes`` bytes, ending after a seal if it meets
        one. These depend only on what the file holds, so a window read again
        (after a failed request, or by the process that claims the segment after
        a crash) holds the same lines. The one segment still being written is
        sealed where its written part ends before that part is read as a
        window: records written later go to the next window.
        """
        with self._lock:
            self._scan_once()
            while self._segments:
                segment = self._segments[0]
                window = self._window(segment, max_lines, max_bytes)
                if window is not None:
                    return window
                if segment is self._active:
                    return None  # nothing written since (or only part of a line): nothing to deliver yet
                self._retire(segment)
            return None

    def _window(self, segment: _Segment, max_lines: int, max_bytes: int) -> Optional[Window]:
        start = segment.offset
        wanted = max_bytes
        while True:  # a line longer than what was read: read more
            data = os.pread(segment.fd, wanted, start)
            if len(data) < wanted or b"\n" in data:
                break
            wanted *= 2
        more = len(data) == wanted  # the file goes on past what was read
        count = 0
        position = 0  # where the lines read so far end
        size = 0  # where the window ends (past a seal, if it ends with one)
        complete = False
        while True:
            if count >= max_lines:
                complete = True
                break
            if data.startswith(SEAL, position):
                size = position + len(SEAL)
                complete = True
                break
            end = data.find(b"\n", position)
            if end < 0:
                complete = more  # the next line ends past max_bytes
                break
            if position and end + 1 > max_bytes:
                complete = True
                break
            position = end + 1
            count += 1
        size = max(size, position)
        if not complete:
            if segment is self._active:
                if not position:
                    return None
                # Still being written: seal what is written, so that the window ends here for whoever reads it.
                seal = SEAL if position == len(data) else b"\n" + SEAL  # (a torn write of ours ends its line)
                self._write(segment, seal)
                size = len(data) + len(seal)
            elif not size:
                return None  # nothing whole left (a dead writer's torn last line): the segment is done
        lines = data[:position].decode("utf-8", "replace").split("\n")
        lines.pop()  # after the last newline: nothing
        return Window(segment, start, size, lines)

    def consume_window(self, window: Window) -> None:
        """Forget ``window``: it was delivered (or given up). A window consumed already is ignored."""
        with self._lock:
            segment = window.segment
            if segment not in self._segments or segment.offset != window.start:
                return
            segment.offset += window.size
            self._bytes -= min(window.size, self._bytes)
            if segment.offset >= segment.size:
                self._retire(segment)

    def consume(self, sizes: int) -> None:
        """Forget ``sizes`` bytes of the oldest records: they were delivered (or given up)."""
        with self._lock:
            left = sizes
            while left > 0 and self._segments:
                segment = self._segments[0]
                step = min(left, segment.size - segment.offset)
                segment.offset += step
                self._bytes -= min(step, self._bytes)
                left -= step
                if segment.offset >= segment.size:
                    self._retire(segment)

    def _retire(self, segment: _Segment) -> None:
        if self._segments and self._segments[0] is segment:
            self._segments.popleft()
        if segment is self._active:
            self._active = None
        unread = segment.size - segment.offset
        self._bytes -= min(max(unread, 0), self._bytes)
        with contextlib.suppress(OSError):
            segment.path.unlink()
        segment.close()

    # -- orphans ----------------------------------------------------------

    def _scan_once(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        try:
            names = sorted(p for p in self.directory.iterdir() if p.name.endswith(SUFFIX))
        except OSError:
            return
        claimed = []
        for path in names:
            try:
                fd = os.open(str(path), os.O_RDWR)
            except OSError:
                continue
            if not _lock(fd, blocking=False):
                os.close(fd)  # its writer is alive
                continue
            size = os.fstat(fd).st_size
            claimed.append(_Segment(path, fd, size))
            self._bytes += size
        # Orphans are older than anything this process writes: deliver them first.
        self._segments.extendleft(reversed(claimed))

    def close(self) -> None:
        """Let go of our segments (still on disk, now claimable by the next client, this one included)."""
        with self._lock:
            for segment in self._segments:
                segment.close()
            self._segments.clear()
            self._active = None
            self._bytes = 0
            self._scanned = False
