"""The first ten minutes: the README's three-line example pasted into a fresh process, as a newcomer would.

With nothing set up it prints one line that says what to do; with
``agent-ledger serve`` running it records, with no configuration at all; the
``local_ledger`` fixture records an agent written exactly as the README shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_ledger_sdk import AgentLedgerClient
from agent_ledger_sdk._local_key import LOCAL_BASE_URL, write_local_key, write_local_url

ROOT = Path(__file__).resolve().parent.parent
README_EXAMPLE = re.search(r"## Three lines\n+```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
assert README_EXAMPLE is not None
SNIPPET = README_EXAMPLE.group(1)


def paste(env_home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_LEDGER_")}
    env["AGENT_LEDGER_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, env=env, timeout=timeout)


def test_pasted_with_nothing_set_up_it_runs_and_says_what_to_do_in_one_line(tmp_path: Path) -> None:
    result = paste(tmp_path)
    assert result.returncode == 0
    assert result.stdout == "Refunds take 5 business days.\n"
    (line,) = result.stderr.splitlines()
    assert "no API key" in line and "agent-ledger serve" in line and "AGENT_LEDGER_API_KEY" in line
    assert "Traceback" not in result.stderr


def test_pasted_with_a_local_key_but_no_ledger_running_it_says_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.setenv("AGENT_LEDGER_HOME", str(tmp_path))
    write_local_key("al_local_abc_secret")
    with socket.socket() as probe:  # an address with nothing listening
        probe.bind(("127.0.0.1", 0))
        write_local_url(f"http://127.0.0.1:{probe.getsockname()[1]}")
    started = time.monotonic()
    result = paste(tmp_path)
    assert time.monotonic() - started < 20  # flush() and the exit are bounded
    assert result.returncode == 0
    assert result.stdout == "Refunds take 5 business days.\n"
    assert "Traceback" not in result.stderr
    assert "Start it with `agent-ledger serve`" in result.stderr
    assert len(result.stderr.splitlines()) <= 3
    assert "journal" in result.stderr  # what was recorded waits for the ledger, not lost


def test_a_local_key_with_no_base_url_talks_to_the_local_ledger_never_the_hosted_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert AgentLedgerClient(api_key="al_local_abc_secret").base_url == LOCAL_BASE_URL
    write_local_url("http://127.0.0.1:9999")
    assert AgentLedgerClient(api_key="al_local_abc_secret").base_url == "http://127.0.0.1:9999"
    monkeypatch.setenv("AGENT_LEDGER_BASE_URL", "http://127.0.0.1:1234")
    assert AgentLedgerClient(api_key="al_local_abc_secret").base_url == "http://127.0.0.1:1234"
    assert AgentLedgerClient(api_key="sk-hosted", base_url="https://x.test").base_url == "https://x.test"


def test_no_key_argument_and_no_environment_uses_the_local_key_file() -> None:
    write_local_key("al_local_abc_secret")
    client = AgentLedgerClient()
    assert client.api_key == "al_local_abc_secret"
    assert client.enabled


@pytest.mark.integration
def test_pasted_with_agent_ledger_serve_running_it_records_with_no_configuration(tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    from .test_cli import cli, serving

    db = tmp_path / "newcomer.db"
    with serving(db):
        result = paste(Path(os.environ["AGENT_LEDGER_HOME"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Refunds take 5 business days.\n"
    assert result.stderr == ""
    listed = cli("sessions", "--db", str(db)).stdout
    assert re.search(r"support-bot\s+success", listed), listed
