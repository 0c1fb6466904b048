"""Running the local ledger: in the foreground (``agent-ledger serve``) or in a background thread."""

from __future__ import annotations

import os
import socket
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

__all__ = [
    "DB_ENV",
    "DEFAULT_PORT",
    "LOCAL_KEY_NAME",
    "BackgroundServer",
    "bind_socket",
    "default_db_path",
    "ensure_local_key",
    "serve_forever",
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
    import logging

    access = logging.getLogger("agent_ledger_sdk.local.access")
    if not access.handlers and access.level == logging.NOTSET:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False


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
