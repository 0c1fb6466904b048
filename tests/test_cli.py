"""The ``agent-ledger`` command, through its real console-script entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the CLI needs the server extra")

from agent_ledger_sdk import AgentLedgerClient, AuthenticationError
from agent_ledger_sdk.local import run

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("agent-ledger"))


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def test_the_console_script_is_installed() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("agent-ledger-sdk ")


def test_keys_create_prints_the_key_last_and_it_works(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    created = cli("keys", "create", "--name", "ci", "--db", str(db))
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("al_")
    listed = cli("keys", "list", "--db", str(db))
    assert "ci" in listed.stdout
    assert secret not in listed.stdout
    key_id = listed.stdout.splitlines()[2].split()[0]
    with run(db=db) as ledger:
        client = AgentLedgerClient(api_key=secret, base_url=ledger.url, batching=False)
        client.start_session("cli-agent")
        revoked = cli("keys", "revoke", key_id, "--db", str(db))  # while the server runs on the same file
        assert revoked.returncode == 0
        assert f"Revoked key {key_id}" in revoked.stdout
        with pytest.raises(AuthenticationError):
            client.start_session("cli-agent")
        client.close()
    assert "revoked" in cli("keys", "list", "--db", str(db)).stdout


def test_budget_set_show_and_remove(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    set_result = cli("budget", "set", "support-bot", "2.5", "--db", db)
    assert set_result.returncode == 0
    assert "$2.5000" in set_result.stdout
    shown = cli("budget", "show", "--db", db)
    assert re.search(r"support-bot\s+\$2\.5000\s+\$0\.0000\s+\$2\.5000", shown.stdout)
    assert "reset at 00:00 UTC" in shown.stdout
    assert cli("budget", "remove", "support-bot", "--db", db).returncode == 0
    assert "No budgets set" in cli("budget", "show", "--db", db).stdout


def test_a_negative_budget_is_refused_clearly(tmp_path: Path) -> None:
    result = cli("budget", "set", "bot", "-1", "--db", str(tmp_path / "l.db"))
    assert result.returncode != 0
    assert "zero or more" in result.stderr or "expected one argument" in result.stderr


def test_sessions_and_show_read_what_a_running_ledger_recorded(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with run(db=db) as ledger:
        client = ledger.client(batching=False)

        @client.tool
        def lookup(order: str) -> str:
            raise KeyError(order)

        @client.session("support-bot")
        def agent() -> None:
            with client.llm_call(provider="openai", model="gpt-4o-mini", prompt="hi") as call:
                call.record(response="hello there", tokens_in=1000, tokens_out=200)
            lookup("A-9")

        with pytest.raises(KeyError):
            agent()
        session_id = ledger.sessions()[0]["id"]
        listed = cli("sessions", "--db", str(db))  # while the server is running
        client.close()
    assert listed.returncode == 0
    assert session_id in listed.stdout
    assert "support-bot" in listed.stdout
    assert "error" in listed.stdout
    shown = cli("show", session_id, "--db", str(db))  # and after it stopped
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"Session {session_id}  agent=support-bot  status=error")
    llm_line = next(line for line in lines if "llm_call" in line)
    assert "openai/gpt-4o-mini" in llm_line
    assert "1000→200" in llm_line
    assert "$0.000270" in llm_line
    assert any("tool_result" in line and "error: KeyError" in line for line in lines)
    assert lines[-1].startswith("Total: 3 events")


def test_show_an_unknown_session_fails_with_a_message(tmp_path: Path) -> None:
    result = cli("show", "nope", "--db", str(tmp_path / "l.db"))
    assert result.returncode == 1
    assert "Session 'nope' not found" in result.stderr


def test_the_database_defaults_to_agent_ledger_db(tmp_path: Path) -> None:
    db = tmp_path / "from-env.db"
    result = cli("keys", "create", "--name", "env", env={"AGENT_LEDGER_DB": str(db)})
    assert result.returncode == 0
    assert db.exists()


def test_serve_answers_the_sdk(tmp_path: Path) -> None:
    db = tmp_path / "served.db"
    secret = cli("keys", "create", "--name", "serve", "--db", str(db)).stdout.strip().splitlines()[-1]
    server = subprocess.Popen(
        [CLI, "serve", "--port", "0", "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url is not None
        client = AgentLedgerClient(api_key=secret, base_url=url, batching=False)
        for _ in range(100):  # the socket is bound before uvicorn accepts: wait for it
            try:
                session_id = client.start_session("served")
                break
            except Exception:
                time.sleep(0.05)
        client.end_session(session_id, "success")
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()
    assert "served" in cli("sessions", "--db", str(db)).stdout


def test_demo_runs_an_agent_and_shows_the_guardrail(tmp_path: Path) -> None:
    result = cli("demo", "--db", str(tmp_path / "demo.db"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Started a local ledger at http://127.0.0.1:" in out
    assert out.count("agent=support-bot  status=success") == 2
    assert "error: RefundNeedsApproval: refunds over $100 need a human" in out
    assert "BudgetGuardrailError: Budget guardrail for agent 'runaway-agent'" in out
    assert "The session ended with status 'error'" in out
    assert re.search(r"runaway-agent\s+\$0\.0500", out)


def test_serve_without_the_server_extra_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
        "from agent_ledger_sdk.cli import main\n"
        f"sys.exit(main(['serve', '--port', '0', '--db', {str(tmp_path / 'l.db')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pip install 'agent-ledger-sdk[server]'" in result.stderr
