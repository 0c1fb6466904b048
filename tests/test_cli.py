"""The ``agent-ledger`` command, through its real console-script entry point."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

pytest.importorskip("starlette", reason="the CLI needs the server extra")

from agent_ledger_sdk import AgentLedgerClient, AuthenticationError
from agent_ledger_sdk._local_key import LOCAL_KEY_PREFIX, local_key_path, local_url_path, write_local_key
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
    assert "Daily budget of 'support-bot' in workspace default: $2.5000" in set_result.stdout
    monthly = cli("budget", "set", "support-bot", "40", "--monthly", "--warn-at", "80", "--db", db)
    assert monthly.returncode == 0, monthly.stderr
    assert "Monthly budget of 'support-bot' in workspace default: $40.0000" in monthly.stdout
    assert "warns at 80%" in monthly.stdout
    workspace = cli("budget", "set-workspace", "100", "--warn-at", "90", "--db", db)
    assert "Daily budget of workspace default, all agents together: $100.0000" in workspace.stdout
    shown = cli("budget", "show", "--db", db)
    assert shown.stdout.splitlines()[0].split() == [
        "WORKSPACE", "BUDGET", "AGENT", "LIMIT", "SPENT", "RESERVED", "REMAINING", "WARN", "AT", "RESETS", "(UTC)"
    ]  # fmt: skip
    assert re.search(
        r"workspace-daily\s+\(all agents\)\s+\$100\.0000\s+\$0\.0000\s+\$0\.0000\s+\$100\.0000\s+90%", shown.stdout
    )
    assert re.search(r"agent-daily\s+support-bot\s+\$2\.5000\s+\$0\.0000\s+\$0\.0000\s+\$2\.5000\s+80%", shown.stdout)
    assert re.search(r"agent-monthly\s+support-bot\s+\$40\.0000\s+.*\d{4}-\d{2}-01 00:00", shown.stdout)
    assert "reset at 00:00 UTC" in shown.stdout
    assert cli("budget", "remove", "support-bot", "--monthly", "--db", db).returncode == 0
    assert "agent-monthly" not in cli("budget", "show", "--db", db).stdout
    assert cli("budget", "remove", "support-bot", "--db", db).returncode == 0
    assert cli("budget", "remove-workspace", "--db", db).returncode == 0
    assert "No budgets set" in cli("budget", "show", "--db", db).stdout


def test_budget_amounts_are_read_exactly(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    assert cli("budget", "set", "bot", "0.1", "--db", str(db)).returncode == 0
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT daily_limit FROM agent_budgets").fetchone() == ("0.1",)
    raw.close()
    bad = cli("budget", "set", "bot", "1", "--warn-at", "120", "--db", str(db))
    assert bad.returncode == 2
    assert "at most 100" in bad.stderr


def test_prices_set_list_check_and_remove(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    unknown = cli("prices", "check", "acme", "private-7b", "--db", db)
    assert unknown.returncode == 1
    assert "No price for model 'private-7b' (provider 'acme')" in unknown.stdout
    added = cli("prices", "set", "ACME/private-7b", "--input", "2", "--output", "6", "--cache-read", "0.2", "--db", db)
    assert added.returncode == 0, added.stderr
    assert "Price of acme/private-7b in workspace default: $2 in, $6 out, $0.2 for cache reads" in added.stdout
    assert re.search(
        r"acme/private-7b\s+\$2\.0000\s+\$6\.0000\s+\$0\.2000\s+-", cli("prices", "list", "--db", db).stdout
    )
    checked = cli("prices", "check", "acme", "private-7b", "--db", db)
    assert checked.returncode == 0
    assert "is priced by this workspace's own price" in checked.stdout
    known = cli("prices", "check", "openai", "openai/gpt-4o-mini-2024-07-18", "--db", db)
    assert "is priced as openai/gpt-4o-mini in genai-prices" in known.stdout
    with run(db=Path(db)) as ledger:
        client = ledger.client(batching=False)
        session_id = client.start_session("priced-by-cli")
        client.log_llm_call(
            session_id,
            {"stepIndex": 0, "provider": "acme", "model": "private-7b", "prompt": "p", "response": "r",
             "tokensIn": 1000, "tokensOut": 1000, "latencyMs": 1},
        )  # fmt: skip
        client.close()
        assert ledger.session(session_id)["costUsd"] == Decimal("0.008")
    assert cli("prices", "remove", "acme/private-7b", "--db", db).returncode == 0
    assert cli("prices", "remove", "acme/private-7b", "--db", db).returncode == 1
    assert "No prices added" in cli("prices", "list", "--db", db).stdout


def test_settings_allow_unpriced_models(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    assert "allow-unpriced-models = false" in cli("settings", "show", "--db", db).stdout
    changed = cli("settings", "set", "allow-unpriced-models", "true", "--db", db)
    assert changed.returncode == 0
    assert "allow-unpriced-models = true" in changed.stdout
    assert "allow-unpriced-models = false" in cli("settings", "show", "--workspace", "other", "--db", db).stdout
    assert cli("settings", "set", "allow-unpriced-models", "maybe", "--db", db).returncode == 1


def test_show_never_shows_an_unpriced_call_as_free(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with run(db=db) as ledger, httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as http:
        session_id = http.post("/v1/sessions", json={"agentName": "flags"}).json()["id"]
        call = {"type": "llm_call", "provider": "openai", "model": "gpt-4o-mini", "tokensIn": 1000, "tokensOut": 10}
        events = [
            {**call, "stepIndex": 0, "response": "known"},
            {**call, "stepIndex": 1, "model": "secret-model", "response": "unknown"},
            {**call, "stepIndex": 2, "usageMissing": True, "tokensIn": 0, "tokensOut": 0, "response": "streamed"},
        ]
        assert http.post("/v1/events", json={"sessionId": session_id, "events": events}).status_code == 202
        ledger.set_budget("flags", 0.0001)
        assert (
            http.post("/v1/events", json={"sessionId": session_id, "events": [{**call, "stepIndex": 3}]}).status_code
            == 429
        )
    lines = cli("show", session_id, "--db", str(db)).stdout.splitlines()
    rows = {line.split()[0]: line for line in lines if line[:4].strip().isdigit()}
    assert "$0.000156" in rows["0"]
    assert re.search(r"\bunpriced\b.*\[no price: see agent-ledger prices set\]", rows["1"])
    assert "$0.0000 " not in rows["1"]
    assert re.search(r"~\$0\.003072\b.*\[estimated: usage missing\]", rows["2"])
    assert "[OVER BUDGET]" in rows["3"]
    assert lines[-1].endswith("(1 unpriced LLM calls, 1 estimated, 1 over budget)")
    listed = cli("sessions", "--db", str(db)).stdout
    assert re.search(r"\$0\.003384 \+1 unpriced", listed)


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


@contextmanager
def serving(db: Path) -> Iterator[tuple[str, list[str]]]:
    """``agent-ledger serve --port 0`` on ``db``: its URL and what it printed up to the listening line."""
    server = subprocess.Popen(
        [CLI, "serve", "--port", "0", "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 30
        url = None
        lines: list[str] = []
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            lines.append(line.rstrip("\n"))
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url is not None, lines
        for _ in range(100):  # the socket is bound before uvicorn accepts: wait for it
            try:
                httpx.get(f"{url}/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, lines
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()


def test_serve_answers_the_sdk(tmp_path: Path) -> None:
    db = tmp_path / "served.db"
    secret = cli("keys", "create", "--name", "serve", "--db", str(db)).stdout.strip().splitlines()[-1]
    with serving(db) as (url, _):
        client = AgentLedgerClient(api_key=secret, base_url=url, batching=False)
        session_id = client.start_session("served")
        client.end_session(session_id, "success")
        client.close()
    assert "served" in cli("sessions", "--db", str(db)).stdout


def test_serve_leaves_a_working_key_for_clients_on_this_machine_and_keeps_it(tmp_path: Path) -> None:
    db = tmp_path / "zero-config.db"
    key_file = local_key_path()  # under the test's own AGENT_LEDGER_HOME
    assert str(key_file).startswith(os.environ["AGENT_LEDGER_HOME"])
    assert not key_file.exists()
    with serving(db) as (url, lines):
        assert f"Database: {db}" in lines
        assert (
            f"Wrote a new local key in {key_file}: clients on this machine with no AGENT_LEDGER_API_KEY "
            "use it automatically." in lines
        )
        assert any(line.startswith(f"Agent Ledger listening on {url}") for line in lines)
        assert local_url_path().read_text().strip() == url  # how clients find it, on a port of its own
        secret = key_file.read_text().strip()
        assert secret.startswith(LOCAL_KEY_PREFIX)
        if os.name == "posix":
            assert key_file.stat().st_mode & 0o777 == 0o600
        response = httpx.post(f"{url}/v1/sessions", json={"agentName": "zero-config"}, headers={"x-api-key": secret})
        assert response.status_code == 201
    listed = cli("keys", "list", "--db", str(db)).stdout
    assert re.search(r"local-default\s+default\s", listed)
    with serving(db) as (_, lines):  # the key still works: kept as it is
        assert any(line.startswith(f"Kept the local key in {key_file}:") for line in lines)
    assert key_file.read_text().strip() == secret
    key_id = secret[len(LOCAL_KEY_PREFIX) :].split("_")[0]
    assert cli("keys", "revoke", key_id, "--db", str(db)).returncode == 0
    with serving(db) as (url, lines):  # revoked: replaced by a new one
        assert any(line.startswith("Wrote a new local key in") for line in lines)
        replacement = key_file.read_text().strip()
        assert replacement != secret
        assert httpx.get(f"{url}/v1/sessions", headers={"x-api-key": replacement}).status_code == 200
    write_local_key(f"{LOCAL_KEY_PREFIX}0000_of-another-database")
    with serving(db) as (_, lines):  # a key of another database: replaced too
        assert any(line.startswith("Wrote a new local key in") for line in lines)
    assert len(re.findall(r"local-default", cli("keys", "list", "--db", str(db)).stdout)) == 3


def test_serve_without_a_writable_key_file_still_serves_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent_ledger_sdk import cli as cli_module
    from agent_ledger_sdk.local import server as server_module

    def read_only(path: Path) -> Path:
        raise PermissionError(13, "Permission denied", str(path))

    served: list[tuple[str, int]] = []
    monkeypatch.setattr(server_module, "write_local_key", read_only)
    monkeypatch.setattr(server_module, "serve_forever", lambda app, host, port, announce: served.append((host, port)))
    assert cli_module.main(["serve", "--port", "0", "--db", str(tmp_path / "l.db")]) == 0
    assert served == [("127.0.0.1", 0)]
    err = capsys.readouterr().err
    assert "Warning: could not write the local key file ([Errno 13] Permission denied" in err
    assert "agent-ledger keys create --name NAME" in err


def test_the_database_defaults_to_ledger_db_in_agent_ledger_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = cli("keys", "create", "--name", "home", env={"AGENT_LEDGER_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert (home / "ledger.db").exists()
    from agent_ledger_sdk.local.server import default_db_path

    assert default_db_path() == Path(os.environ["AGENT_LEDGER_HOME"]) / "ledger.db"


def test_sessions_filter_by_user_and_tags_and_show_the_context_and_the_spans(tmp_path: Path) -> None:
    db = tmp_path / "context.db"
    with run(db=db) as ledger, httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as http:

        def start(agent: str, **context: object) -> str:
            return str(http.post("/v1/sessions", json={"agentName": agent, **context}).json()["id"])

        parent = start("planner", userId="alice", tags=["prod", "refunds"], metadata={"plan": "pro"})
        child = start("worker", userId="alice", tags=["prod"], parentSessionId=parent)
        other = start("worker", userId="bob", tags=["refunds"])
        events = [
            {"type": "tool_call", "stepIndex": 0, "toolName": "plan", "toolInput": {}, "spanId": "a",
             "startedAt": "2026-11-25T15:27:17.123Z"},
            {"type": "llm_call", "stepIndex": 1, "provider": "test", "model": "m", "tokensIn": 1, "tokensOut": 2,
             "parentSpanId": "a", "spanId": "b", "startedAt": "2026-11-25T15:27:17.456Z"},
            {"type": "tool_call", "stepIndex": 2, "toolName": "lookup", "toolInput": {}, "parentSpanId": "b",
             "spanId": "c", "startedAt": "2026-11-26T00:00:01Z"},
            {"type": "tool_result", "stepIndex": 3, "toolName": "plan", "toolOutput": "done", "spanId": "a"},
        ]  # fmt: skip
        assert http.post("/v1/events", json={"sessionId": parent, "events": events}).status_code == 202
    everything = cli("sessions", "--db", str(db))
    assert everything.returncode == 0, everything.stderr
    header = everything.stdout.splitlines()[0].split()
    assert header[:4] == ["SESSION", "AGENT", "USER", "STATUS"] and "TAGS" in header
    assert re.search(rf"{parent}\s+planner\s+alice\s+running.*prod,refunds", everything.stdout)
    alices = cli("sessions", "--user", "alice", "--db", str(db)).stdout
    assert parent in alices and child in alices and other not in alices
    both = cli("sessions", "--tag", "prod", "--tag", "refunds", "--db", str(db)).stdout
    assert parent in both and child not in both and other not in both
    assert "No sessions recorded yet." in cli("sessions", "--user", "carol", "--db", str(db)).stdout

    shown = cli("show", parent, "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"Session {parent}  agent=planner  status=running  user=alice  tags=prod,refunds"
    assert f"  child sessions: {child}" in lines
    assert '  metadata: {"plan": "pro"}' in lines
    table_header = next(line for line in lines if line.startswith("STEP"))
    assert table_header.split()[:4] == ["STEP", "STARTED", "(UTC)", "TYPE"]
    rows = {line.lstrip().split()[0]: line for line in lines if line.lstrip()[:1].isdigit()}
    type_at = table_header.index("TYPE")
    assert rows["0"][type_at:].startswith("tool_call ")
    assert rows["1"][type_at:].startswith("  llm_call ")  # under the span of step 0
    assert rows["2"][type_at:].startswith("    tool_call ")  # under the span of step 1
    assert rows["3"][type_at:].startswith("tool_result ")  # the result of step 0's span, at its level
    assert "15:27:17.123" in rows["0"] and "15:27:17.456" in rows["1"]
    assert "2026-11-26 00:00:01" in rows["2"]  # another day than the session's start: the full date
    child_shown = cli("show", child, "--db", str(db)).stdout.splitlines()
    assert f"  parent session: {parent}" in child_shown
    assert "STARTED" not in next(line for line in child_shown if line.startswith("STEP"))


def test_demo_runs_an_agent_and_shows_the_guardrail(tmp_path: Path) -> None:
    result = cli("demo", "--db", str(tmp_path / "demo.db"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Started a local ledger at http://127.0.0.1:" in out
    assert out.count("agent=support-bot  status=success") == 2
    assert "error: RefundNeedsApproval: refunds over $100 need a human" in out
    assert "BudgetGuardrailError: " in out  # CI greps it
    assert re.search(r"(\d+) LLM calls ran; the ledger recorded \1, costing \$0\.0\d+", out)
    assert "exactly what the calls that ran cost" in out
    assert "The session ended with status 'error'" in out
    assert re.search(r"agent-daily\s+runaway-agent\s+\$0\.0500", out)


def test_serve_without_the_server_extra_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
        "from agent_ledger_sdk.cli import main\n"
        f"sys.exit(main(['serve', '--port', '0', '--db', {str(tmp_path / 'l.db')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pip install 'agent-ledger-sdk[server]'" in result.stderr
