"""Running the local ledger: in the foreground (``agent-ledger serve``) or in a background thread."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

from .._local_key import (
    DB_ENV,
    LOCAL_BASE_URL,
    local_key_path,
    read_local_key,
    state_dir,
    write_local_key,
    write_local_url,
)
from .records import DEFAULT_WORKSPACE
from .service import LedgerService

DEFAULT_PORT = 8787
LOCAL_KEY_NAME = "local-default"
BACKLOG = 2048  # connections the kernel holds for the workers to accept
WORKER_START_TIMEOUT = 120.0  # seconds a worker process may take to import, open its database and serve
WORKER_STOP_TIMEOUT = 30.0  # seconds a worker may take to finish its requests once told to stop
STARTUP_FAILURE = 3  # a worker's exit code when it could not start serving (as uvicorn's)

__all__ = [
    "DB_ENV",
    "DEFAULT_PORT",
    "LOCAL_KEY_NAME",
    "BackgroundServer",
    "bind_socket",
    "default_db_path",
    "ensure_local_key",
    "serve_forever",
    "serve_workers",
    "url_for",
]


def default_db_path() -> Union[Path, str]:
    """``AGENT_LEDGER_DB`` (a SQLite path or a ``postgresql://`` URL), else ``ledger.db`` in the ledger's state
    directory (``AGENT_LEDGER_HOME``, else ``agent-ledger`` in the user's data directory)."""
    from .store import is_url

    configured = os.environ.get(DB_ENV)
    if configured:
        return configured if is_url(configured) else Path(configured).expanduser()
    return state_dir() / "ledger.db"


def ensure_local_key(store: LedgerService) -> tuple[Path, bool]:
    """Make sure the local key file holds a key that works on ``store``; return its path and whether it is new.

    A key already in the file is kept when it authenticates against this database
    (unrevoked); otherwise a key named ``local-default`` is created in the
    ``default`` workspace and written there (mode 0600). Clients on this machine
    with no ``AGENT_LEDGER_API_KEY`` use that file.
    """
    current = read_local_key()
    if current is not None and store.authenticate(current) is not None:
        return local_key_path(), False
    new = store.create_key(LOCAL_KEY_NAME, DEFAULT_WORKSPACE)
    return write_local_key(new.secret), True


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only then, and
    # without it every response waits for the client's delayed ACK (40 ms on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Pick another --port.") from None
    return sock


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class BackgroundServer:
    """uvicorn serving an ASGI app from a daemon thread of this process."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self._socket = bind_socket(host, port)
        self.host = host
        self.port = self._socket.getsockname()[1]
        self.url = url_for(host, self.port)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread: Optional[threading.Thread] = None

    def start(self, timeout: float = 15.0) -> BackgroundServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="agent-ledger-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the local ledger server stopped while starting; see the log above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local ledger server did not start within {timeout} s")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def log_requests() -> None:
    """Show the access log (one line per request, ``agent_ledger_sdk.local.access``) on stderr, unless the
    program configured that logger itself."""

    access = logging.getLogger("agent_ledger_sdk.local.access")
    if not access.handlers and access.level == logging.NOTSET:
        handler = logging.StreamHandler()
        handler.setFormatter(_AccessFormatter("%(asctime)s %(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False


class _AccessFormatter(logging.Formatter):
    """``logging.Formatter`` whose time text is made once a second, not once a line: ``formatTime`` (local time,
    strftime) was a third of the access log's cost, and the access log a tenth of a small request's."""

    _second: Optional[int] = None
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:  # emit runs under the handler's lock: one thread at a time
            self._text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return f"{self._text},{int(record.msecs):03d}"


def serve_forever(app: Any, host: str, port: int, announce: Any = print) -> None:
    """Serve in the foreground until interrupted (``agent-ledger serve``)."""
    import uvicorn

    sock = bind_socket(host, port)
    url = url_for(host, sock.getsockname()[1])
    announce(f"Agent Ledger listening on {url}  (Ctrl+C to stop)")
    try:
        write_local_url(url)  # clients holding the local key find this address with no configuration
    except OSError:
        if url != LOCAL_BASE_URL:
            announce(f"Clients find it with: export AGENT_LEDGER_BASE_URL={url}")
    log_requests()
    config = uvicorn.Config(app, log_level="info", lifespan="off", access_log=False)  # the app logs each request
    uvicorn.Server(config).run(sockets=[sock])


def serve_workers(
    db: Union[str, Path],
    prices: Union[str, Path, None],
    host: str,
    port: int,
    workers: int,
    announce: Any = print,
) -> None:
    """Serve in the foreground with ``workers`` processes accepting on one port, until SIGTERM or SIGINT.

    This process binds the socket (once, so every worker serves the same port), then supervises: each
    worker is a fresh interpreter (multiprocessing's spawn) that opens ``db`` itself and serves it with
    uvicorn. A worker that dies while serving is replaced; one that fails before it serves stops them all
    (raised as a RuntimeError: the next would fail the same way). On SIGTERM or SIGINT every worker is
    told to stop, finishes the requests it has, and exits. The schema must be up to date (``migrate``) and
    the local key and URL files written before: the workers only serve.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    sock = bind_socket(host, port)
    sock.listen(BACKLOG)  # from now on connections wait in the kernel until a worker accepts them
    # Each worker writes its metrics' counts here, so that /metrics answers for them all (create_metrics).
    metrics_dir = tempfile.mkdtemp(prefix="agent-ledger-metrics-")
    url = url_for(host, sock.getsockname()[1])
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads or connections
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    handled = [signal.SIGINT, signal.SIGTERM]
    previous = {signum: signal.signal(signum, on_signal) for signum in handled}
    running: list[_WorkerProcess] = []
    try:
        for _ in range(workers):
            running.append(_WorkerProcess.start(context, sock, db, prices, metrics_dir))
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not stop.is_set() and not all(w.ready for w in running):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server workers did not start within {WORKER_START_TIMEOUT:.0f} s")
            wait([c for w in running for c in w.waitables() if not w.ready], timeout=0.2)
            for worker in running:
                worker.poll()
                if worker.failed:
                    raise RuntimeError(worker.failure())
        if stop.is_set():
            return
        try:
            write_local_url(url)  # clients holding the local key find this address with no configuration
            found = ""
        except OSError:
            found = f"Clients find it with: export AGENT_LEDGER_BASE_URL={url}" if url != LOCAL_BASE_URL else ""
        announce(
            f"Agent Ledger listening on {url} with {workers} worker processes "
            f"(pids {', '.join(str(w.pid) for w in running)}; Ctrl+C to stop)"
        )
        if found:
            announce(found)
        while not stop.wait(0.5):
            for index, worker in enumerate(running):
                worker.poll()
                if worker.failed:
                    raise RuntimeError(worker.failure())
                if worker.process.exitcode is not None:  # it died while serving: start another
                    replacement = _WorkerProcess.start(context, sock, db, prices, metrics_dir)
                    announce(
                        f"Worker process {worker.pid} exited (code {worker.process.exitcode}); "
                        f"started {replacement.pid} in its place"
                    )
                    worker.close()
                    running[index] = replacement
    finally:
        for worker in running:
            worker.stop()
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT
        for worker in running:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            worker.close()
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _WorkerProcess:
    """One server process of :func:`serve_workers`, and the pipe on which it says it is serving."""

    def __init__(self, process: Any, ready_pipe: Any) -> None:
        self.process = process
        self.pid: int = process.pid
        self._pipe = ready_pipe
        self.ready = False

    @classmethod
    def start(
        cls,
        context: Any,
        sock: socket.socket,
        db: Union[str, Path],
        prices: Union[str, Path, None],
        metrics_dir: str,
    ) -> _WorkerProcess:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_serve_worker,
            args=(sock, db, None if prices is None else str(prices), sender, os.getpid(), metrics_dir),
            name="agent-ledger-worker",
        )
        process.start()
        sender.close()  # the worker holds the other copy: the pipe closes when it exits
        return cls(process, receiver)

    def waitables(self) -> list[Any]:
        return [self._pipe, self.process.sentinel]

    def poll(self) -> None:
        """Read the worker's ready message if it sent it."""
        if self.ready:
            return
        try:
            if self._pipe.poll():
                self._pipe.recv()
                self.ready = True
        except (EOFError, OSError):
            pass  # it exited without saying so: ``failed``

    @property
    def failed(self) -> bool:
        """It exited before it served."""
        return not self.ready and self.process.exitcode is not None

    def failure(self) -> str:
        return (
            f"server worker process {self.pid} exited (code {self.process.exitcode}) before it could serve; "
            "its message is above"
        )

    def stop(self) -> None:
        if self.process.exitcode is None:
            self.process.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits

    def close(self) -> None:
        self._pipe.close()
        self.process.close()


def _serve_worker(
    sock: socket.socket, db: Union[str, Path], prices: Optional[str], ready: Any, supervisor: int, metrics_dir: str
) -> None:  # pragma: no cover - runs in the worker processes (tests/test_cli_operations.py runs them)
    """A worker of :func:`serve_workers`: open the database, serve on ``sock``, close the database."""
    server: Any = None
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        # Before uvicorn takes the signals over, and again when it raises them after its graceful shutdown.
        stopping.set()
        if server is not None:
            server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    store: Any = None
    try:
        import uvicorn

        from .app import create_app
        from .pricing import PriceBook
        from .store import open_store

        store = open_store(db, migrate=False)  # the supervisor migrated it
        app = create_app(LedgerService(store, PriceBook(prices)), shared_metrics=metrics_dir)
    except Exception as exc:
        print(f"agent-ledger: error: server worker {os.getpid()}: {exc}", file=sys.stderr, flush=True)
        if store is not None:
            store.close()
        sys.exit(STARTUP_FAILURE)
    try:
        log_requests()
        config = uvicorn.Config(app, log_level="info", lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        if stopping.is_set():
            return

        def watch() -> None:
            """Say when serving; stop if the supervisor is gone (killed: nobody else would stop this process)."""
            while not server.started and not server.should_exit:
                time.sleep(0.02)
            if server.started:
                ready.send(os.getpid())
            while not server.should_exit:
                if os.getppid() != supervisor:
                    server.should_exit = True
                time.sleep(0.5)

        threading.Thread(target=watch, name="agent-ledger-worker-watch", daemon=True).start()
        server.run(sockets=[sock])
    finally:
        with contextlib.suppress(OSError, ValueError):
            app.state.metrics.share()  # its last counts, for the workers that serve on
        store.close()
        ready.close()
