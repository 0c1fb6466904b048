"""How a client finds a local ledger with no configuration: its key file and its default address.

``agent-ledger serve`` writes a key of its own ledger to :func:`local_key_path`
(mode 0600) and the address it listens on to :func:`local_url_path`. A client
given no key (no ``api_key=``, no ``AGENT_LEDGER_API_KEY``) uses that key, and
a client holding a local key (prefix ``al_local_``) with no base URL set talks
to that address (else :data:`LOCAL_BASE_URL`), never to the hosted API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

LOCAL_KEY_PREFIX = "al_local_"
LOCAL_BASE_URL = "http://127.0.0.1:8787"
DB_ENV = "AGENT_LEDGER_DB"
HOME_ENV = "AGENT_LEDGER_HOME"


def state_dir() -> Path:
    """``AGENT_LEDGER_HOME``, else ``agent-ledger`` in the user's data directory."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif os.uname().sysname == "Darwin":  # pragma: no cover
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "agent-ledger"


def local_key_path() -> Path:
    return state_dir() / "local-key"


def local_url_path() -> Path:
    return state_dir() / "local-url"


def read_local_url() -> Optional[str]:
    """Where ``agent-ledger serve`` last listened on this machine, or None."""
    try:
        text = local_url_path().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.startswith("http://") else None


def write_local_url(url: str) -> None:
    path = local_url_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(url + "\n", encoding="utf-8")


def is_local_key(key: str) -> bool:
    return key.startswith(LOCAL_KEY_PREFIX)


def read_local_key() -> Optional[str]:
    """The key ``agent-ledger serve`` left for clients on this machine, or None."""
    try:
        text = local_key_path().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if is_local_key(text) else None


def write_local_key(secret: str) -> Path:
    """Store ``secret`` where clients on this machine find it, readable by this user only."""
    path = local_key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)
    return path
