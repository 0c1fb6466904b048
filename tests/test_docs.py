"""Every Python snippet in README.md and docs/ runs, against a real local ledger."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the snippets run against a local ledger")

import importlib.util

import agent_ledger_sdk
from agent_ledger_sdk import AgentLedgerClient, _default
from agent_ledger_sdk.local import LocalLedger, run

from . import fake_providers

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def snippets(document: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(document.read_text()) if lang == language]


@pytest.fixture(scope="module")
def ledger() -> Iterator[LocalLedger]:
    with run() as running:
        yield running


@pytest.fixture(scope="module")
def providers() -> Iterator[str]:
    """OpenAI and Anthropic stand-ins on 127.0.0.1: the snippets use the real clients as users write them."""
    with fake_providers.serve() as url:
        yield url


def _uninstrument() -> None:
    for package, integration in (("openai", "openai"), ("anthropic", "anthropic"), ("agents", "openai_agents")):
        if importlib.util.find_spec(package) is not None:
            getattr(agent_ledger_sdk, f"uninstrument_{integration}")()


@pytest.fixture
def no_trace_export() -> Iterator[None]:
    """The Agents SDK exports traces to OpenAI by default: not from a test with no network."""
    if importlib.util.find_spec("agents") is None:
        yield
        return
    import agents
    from agents.tracing import get_trace_provider

    provider = get_trace_provider()
    kept = list(getattr(getattr(provider, "_multi_processor", None), "_processors", ()))
    agents.set_trace_processors([])
    try:
        yield
    finally:
        agents.set_trace_processors(kept)


@pytest.mark.integration
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if snippets(d, "python")], ids=lambda d: d.name)
def test_python_snippets_run(
    document: Path, ledger: LocalLedger, providers: str, no_trace_export: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**ledger.env(), **fake_providers.environment(providers)}.items():
        monkeypatch.setenv(name, value)
    try:
        _run_snippets(document, monkeypatch)
    finally:
        _uninstrument()
    if document.name == "otel.md":  # its spans reached the collector
        assert fake_providers.exported_trace_requests


def _run_snippets(document: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_default, "_default", None)
    namespace: dict[str, object] = {"__name__": f"docs_{document.stem}"}
    for number, code in enumerate(snippets(document, "python"), 1):
        try:
            exec(compile(code, f"{document.name} snippet {number}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message names the snippet
            raise AssertionError(f"{document.name} snippet {number} failed: {exc!r}\n{code}") from exc
    client = _default._default
    if client is not None:
        assert client.flush(10) == 0
        client.close()
    for value in namespace.values():  # the snippets' own clients: send what they queued, close sockets
        if isinstance(value, AgentLedgerClient):
            assert value.flush(10) == 0
            value.close()


CLI_LINE = re.compile(r"^agent-ledger (?!serve)(.*)$", re.M)


@pytest.mark.integration
@pytest.mark.parametrize(
    "document", [d for d in DOCUMENTS if CLI_LINE.search("\n".join(snippets(d, "bash")))], ids=lambda d: d.name
)
def test_cli_snippets_run(document: Path, tmp_path: Path) -> None:
    cli = str(Path(sys.executable).with_name("agent-ledger"))
    for line in CLI_LINE.findall("\n".join(snippets(document, "bash"))):
        args = line.split("#")[0].split()
        result = subprocess.run(
            [cli, *args, "--db", str(tmp_path / "docs.db")], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"agent-ledger {line}: {result.stderr}"


def test_the_readme_opens_with_the_two_commands() -> None:
    commands = snippets(ROOT / "README.md", "bash")[:2]
    assert commands[0].strip().endswith("agent-ledger demo")
    assert commands[1].strip() == 'python -m pip install -e ".[dev]" && python -m pytest'
    assert commands[1].strip() in (ROOT / ".ci" / "run").read_text()
