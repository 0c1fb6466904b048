"""Sessions of the local ledger over real HTTP: who and what they are for, their children, filters, keys, the file."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette", reason="the local ledger needs the server extra")

from agent_ledger_sdk._local_key import LOCAL_KEY_PREFIX
from agent_ledger_sdk.local import LocalLedger, run

from .ledger_fixtures import backend_ledger, raw_rows, sqlite_service

pytestmark = pytest.mark.integration


ledger = backend_ledger()


@pytest.fixture
def http(ledger: LocalLedger) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": ledger.api_key}) as client:
        yield client


def start(http: httpx.Client, agent: str = "ctx-agent", **context: Any) -> dict[str, Any]:
    response = http.post("/v1/sessions", json={"agentName": agent, **context})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# -- context: userId, tags, metadata, parentSessionId -----------------------------------


def test_a_session_keeps_its_user_tags_metadata_and_parent(http: httpx.Client) -> None:
    parent = start(http, "planner")
    metadata = {"plan": "pro", "region": "eu", "nested": {"n": [1, 2.5, None, True]}}
    started = start(
        http, "worker", userId="user-42", tags=["prod", "refunds"], metadata=metadata, parentSessionId=parent["id"]
    )
    context = {"userId": "user-42", "tags": ["prod", "refunds"], "metadata": metadata, "parentSessionId": parent["id"]}
    assert {k: started[k] for k in context} == context
    assert started["status"] == "running"
    read = http.get(f"/v1/sessions/{started['id']}").json()
    assert {k: read[k] for k in context} == context
    assert read["childSessionIds"] == []
    (listed,) = http.get("/v1/sessions", params={"agent": "worker"}).json()["sessions"]
    assert {k: listed[k] for k in context} == context
    assert http.get(f"/v1/sessions/{parent['id']}").json()["childSessionIds"] == [started["id"]]


def test_a_session_without_context_answers_null_empty_list_and_empty_object(http: httpx.Client) -> None:
    started = start(http, "plain", userId=None, tags=None, metadata=None, parentSessionId=None)
    for body in (started, http.get(f"/v1/sessions/{started['id']}").json()):
        assert (body["userId"], body["tags"], body["metadata"], body["parentSessionId"]) == (None, [], {}, None)
    assert http.get(f"/v1/sessions/{started['id']}").json()["childSessionIds"] == []


def test_children_are_listed_in_start_order_and_only_from_the_same_workspace(
    http: httpx.Client, ledger: LocalLedger
) -> None:
    parent = start(http, "orchestrator")["id"]
    children = [start(http, "sub-agent", parentSessionId=parent)["id"] for _ in range(3)]
    other_key = ledger.service.create_key("other", "other-workspace").secret
    outsider = httpx.post(
        f"{ledger.url}/v1/sessions",
        json={"agentName": "outsider", "parentSessionId": parent},
        headers={"x-api-key": other_key},
    )
    assert outsider.status_code == 201  # a parent id is stored as given: no existence check across workspaces
    assert outsider.json()["parentSessionId"] == parent
    assert http.get(f"/v1/sessions/{parent}").json()["childSessionIds"] == children
    unknown = start(http, "orphan", parentSessionId="no-such-session")
    assert unknown["parentSessionId"] == "no-such-session"


def test_repeated_tags_are_kept_once_in_their_first_order(http: httpx.Client) -> None:
    started = start(http, "dups", tags=["b", "a", "b", "a", "c"])
    assert started["tags"] == ["b", "a", "c"]
    many = [f"t{i}" for i in range(50)]
    assert start(http, "fifty", tags=many + many)["tags"] == many  # 50 distinct tags is the limit


def test_metadata_up_to_16_kb_of_compact_json_is_accepted(http: httpx.Client) -> None:
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    fits = {"k": "x" * (16 * 1024 - overhead)}
    assert start(http, "meta", metadata=fits)["metadata"] == fits
    over = {"k": "x" * (16 * 1024 - overhead + 1)}
    response = http.post("/v1/sessions", json={"agentName": "meta", "metadata": over})
    assert response.status_code == 400
    assert '"metadata" is 16385 bytes as compact JSON; the limit is 16384' in response.json()["error"]


BAD_CONTEXT = [
    ("user-number", {"userId": 42}, '"userId" must be a string of 1 to 256 characters'),
    ("user-empty", {"userId": ""}, '"userId" must be a string of 1 to 256 characters'),
    ("user-long", {"userId": "u" * 257}, "got a string of 257 characters"),
    (
        "tags-string",
        {"tags": "prod"},
        '"tags" must be a list of strings, e.g. {"tags": ["prod", "refunds"]}; got a string',
    ),
    ("tags-number", {"tags": ["ok", 3]}, '"tags[1]" must be a non-empty string of at most 100 characters; got 3'),
    ("tags-empty", {"tags": ["ok", ""]}, '"tags[1]" must be a non-empty string'),
    ("tags-blank", {"tags": ["  "]}, '"tags[0]" must be a non-empty string'),
    ("tags-long", {"tags": ["t" * 101]}, '"tags[0]" must be a non-empty string of at most 100 characters'),
    ("tags-too-many", {"tags": [f"t{i}" for i in range(51)]}, '"tags" holds 51 distinct tags; the limit is 50'),
    ("metadata-list", {"metadata": [1]}, '"metadata" must be a JSON object, e.g. {"metadata": {"plan": "pro"}}'),
    ("metadata-string", {"metadata": "{}"}, '"metadata" must be a JSON object'),
    ("parent-number", {"parentSessionId": 7}, '"parentSessionId" must be a string of 1 to 256 characters'),
    ("parent-empty", {"parentSessionId": ""}, '"parentSessionId" must be a string'),
]


@pytest.mark.parametrize(("case", "context", "message"), BAD_CONTEXT, ids=[c[0] for c in BAD_CONTEXT])
def test_a_wrongly_typed_context_field_is_a_400_that_names_it(
    http: httpx.Client, ledger: LocalLedger, case: str, context: dict[str, Any], message: str
) -> None:
    agent = f"bad-context-{case}"
    response = http.post("/v1/sessions", json={"agentName": agent, **context})
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert ledger.sessions(agent) == []


def test_nan_or_infinity_in_metadata_is_a_400_that_says_where(http: httpx.Client) -> None:
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        content = '{"agentName": "nan-meta", "metadata": {"scores": [1, ' + literal + "]}}"
        response = http.post("/v1/sessions", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400, literal
        assert "metadata.scores[1] is NaN or Infinity" in response.json()["error"]


# -- filters -------------------------------------------------------------------------------


def test_sessions_are_filtered_by_user_and_by_every_given_tag(ledger: LocalLedger) -> None:
    key = ledger.service.create_key("filters", "filter-team").secret
    with httpx.Client(base_url=ledger.url, headers={"x-api-key": key}) as http:
        a = start(http, "f", userId="alice", tags=["prod", "refunds"])["id"]
        b = start(http, "f", userId="bob", tags=["prod"])["id"]
        c = start(http, "f", userId="alice", tags=["staging", "refunds"])["id"]
        d = start(http, "f")["id"]

        def ids(**params: Any) -> list[str]:
            response = http.get("/v1/sessions", params=params)
            assert response.status_code == 200, response.text
            return [s["id"] for s in response.json()["sessions"]]

        assert ids() == [d, c, b, a]
        assert ids(user="alice") == [c, a]
        assert ids(user="carol") == []
        assert ids(tag="prod") == [b, a]
        assert ids(tag=["prod", "refunds"]) == [a]
        assert ids(tag=["refunds", "prod", "refunds"]) == [a]
        assert ids(tag=["prod", "nope"]) == []
        assert ids(user="alice", tag="refunds") == [c, a]
        first = http.get("/v1/sessions", params={"user": "alice", "limit": 1}).json()
        assert [s["id"] for s in first["sessions"]] == [c]
        assert ids(user="alice", limit=1, cursor=first["nextCursor"]) == [a]
        for empty in ({"user": ""}, {"tag": ""}):
            response = http.get("/v1/sessions", params=empty)
            assert response.status_code == 400
            assert "must not be empty" in response.json()["error"]
    assert ledger.sessions(user="alice") == []  # those were another workspace's sessions


def test_the_user_filter_has_an_index(ledger: LocalLedger) -> None:
    query = "SELECT * FROM sessions WHERE workspace = ? AND user_id = ? ORDER BY seq DESC"
    if isinstance(ledger.db_path, Path):
        plan = raw_rows(ledger.db_path, f"EXPLAIN QUERY PLAN {query}", ("w", "u"))
    else:  # a near-empty table: tell the planner a scan is dear, as it is on a real one
        plan = raw_rows(ledger.db_path, f"EXPLAIN {query}", ("w", "u"), setup="SET enable_seqscan = off")
    assert any("sessions_by_user" in str(row) for row in plan)


# -- keys ------------------------------------------------------------------------------------


def test_new_keys_say_they_come_from_a_local_ledger(ledger: LocalLedger) -> None:
    new = ledger.service.create_key("prefixed")
    assert new.secret.startswith(f"{LOCAL_KEY_PREFIX}{new.key.id}_")
    assert ledger.api_key.startswith(LOCAL_KEY_PREFIX)
    response = httpx.get(f"{ledger.url}/v1/sessions", headers={"x-api-key": new.secret})
    assert response.status_code == 200
    for bad in ("al_local_nope_nope", "al_local_", "al_local_x", f"al_local_{new.key.id}_wrong", "al_local__x"):
        assert httpx.get(f"{ledger.url}/v1/sessions", headers={"x-api-key": bad}).status_code == 401, bad


# The schema of the first release, and a key of the form it issued (al_<id>_<secret>).
OLD_SCHEMA = """
CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, workspace TEXT NOT NULL, key_hash TEXT NOT NULL,
    created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE sessions (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, workspace TEXT NOT NULL,
    agent_name TEXT NOT NULL, status TEXT NOT NULL, error_message TEXT, started_at TEXT NOT NULL, ended_at TEXT,
    cost_usd REAL NOT NULL DEFAULT 0, tokens_in INTEGER NOT NULL DEFAULT 0, tokens_out INTEGER NOT NULL DEFAULT 0,
    event_count INTEGER NOT NULL DEFAULT 0, unpriced_count INTEGER NOT NULL DEFAULT 0);
CREATE INDEX sessions_by_workspace ON sessions (workspace, seq);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL REFERENCES sessions (id),
    step_index INTEGER, type TEXT NOT NULL, payload TEXT NOT NULL, cost_usd REAL NOT NULL DEFAULT 0,
    priced INTEGER NOT NULL DEFAULT 1, pricing_note TEXT, received_at TEXT NOT NULL);
"""
OLD_KEY = "al_0123456789ab_oldSecretWith_underscores-and-dashes"


def make_old_database(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO api_keys VALUES ('0123456789ab', 'old', 'default', ?, '2026-01-01T00:00:00Z', NULL)",
            (hashlib.sha256(OLD_KEY.encode()).hexdigest(),),
        )
        db.execute(
            "INSERT INTO sessions (id, workspace, agent_name, status, started_at) "
            "VALUES ('old-session', 'default', 'veteran', 'success', '2026-01-01T00:00:00Z')"
        )
        db.execute(
            "INSERT INTO events (session_id, step_index, type, payload, received_at) "
            """VALUES ('old-session', 0, 'tool_call', '{"type":"tool_call","stepIndex":0}', '2026-01-01T00:00:00Z')"""
        )


def test_a_database_of_the_previous_schema_opens_and_its_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_old_database(path)
    with run(db=path) as ledger, httpx.Client(base_url=ledger.url, headers={"x-api-key": OLD_KEY}) as http:
        old = http.get("/v1/sessions/old-session")
        assert old.status_code == 200, old.text
        body = old.json()
        assert (body["userId"], body["tags"], body["metadata"], body["parentSessionId"]) == (None, [], {}, None)
        assert body["childSessionIds"] == []
        assert [e["type"] for e in body["events"]] == ["tool_call"]
        child = start(http, "newcomer", userId="u", tags=["t"], parentSessionId="old-session")
        assert http.get("/v1/sessions/old-session").json()["childSessionIds"] == [child["id"]]
        assert [s["id"] for s in http.get("/v1/sessions", params={"tag": "t"}).json()["sessions"]] == [child["id"]]
    with sqlite_service(path) as store:  # a second open finds every column in place
        assert store.authenticate(OLD_KEY) == "default"
        assert store.get_session(child["id"])["userId"] == "u"


# -- the database file ---------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_the_database_and_its_wal_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "private.db"
    old_umask = os.umask(0o022)
    try:
        with sqlite_service(path) as store:
            session = store.start_session("w", "a", None).body["id"]
            assert store.get_session(session)["status"] == "running"
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            assert all(f.exists() for f in files)
            for f in files:
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    finally:
        os.umask(old_umask)
    existing = tmp_path / "shared.db"
    existing.touch(mode=0o644)
    os.chmod(existing, 0o644)
    sqlite_service(existing).close()
    assert stat.S_IMODE(existing.stat().st_mode) == 0o644  # a file the user made is left as it is
