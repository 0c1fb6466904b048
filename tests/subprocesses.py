"""Helpers for tests that run the SDK in processes of their own: scripts, and free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap


def free_port() -> int:
    """A port with nothing listening on it (taken from the OS, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def python(code: str) -> list[str]:
    # -W: Python 3.12+ warns about fork() in a process with threads, which some of these scripts do.
    return [sys.executable, "-W", "ignore::DeprecationWarning", "-c", textwrap.dedent(code)]


def run_script(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``env`` added to this one's environment."""
    return subprocess.run(python(code), capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})
