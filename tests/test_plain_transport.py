"""Our own transport to a plain-HTTP ledger: the idempotent POSTs in one write and blocking reads."""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import httpx
import pytest

from agent_ledger_sdk._base_client import BaseClient
from agent_ledger_sdk._exceptions import APIConnectionError, APITimeoutError
from agent_ledger_sdk._http import PlainTransport, SyncHTTP

from .subprocesses import free_port

Answer = Callable[[socket.socket, bytes, int], bool]  # (connection, request, index) -> keep the connection open


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
        0,
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


@contextmanager
def server(answer: Answer) -> Iterator[tuple[str, list[bytes], list[int]]]:
    """A server on 127.0.0.1 that answers each request with ``answer``; yields its URL, the requests
    it read, and how many connections it accepted (boxed)."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []
    accepted = [0]

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                request = read_request(conn)
                if not request:
                    return
                requests.append(request)
                if not answer(conn, request, len(requests) - 1):
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted[0] += 1
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", requests, accepted
    finally:
        listener.close()


def post(url: str, key: Any = "key-1", timeout: float = 5.0) -> httpx.Response:
    http = SyncHTTP(BaseClient(api_key="k", base_url=url, timeout=timeout))
    try:
        assert isinstance(http.client() and http._direct, PlainTransport)
        return http.post("/v1/events", content=b'{"events":[]}', idempotency_key=key, max_retries=0)
    finally:
        http.close()


GZIPPED = gzip.compress(b'{"accepted":2}')


def reply(status: int, body: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([b"HTTP/1.1 %d X" % status, *headers, b"", b""]) + body


@pytest.mark.parametrize(
    "answer",
    [
        reply(202, b'{"accepted":2}', b"Content-Length: 14"),
        reply(202, b'5\r\n{"acc\r\n9\r\nepted":2}\r\n0\r\n\r\n', b"Transfer-Encoding: chunked"),
        reply(202, GZIPPED, b"Content-Encoding: gzip", b"Content-Length: %d" % len(GZIPPED)),
        reply(202, b'{"accepted":2}', b"Connection: close"),  # no length: the body ends with the connection
    ],
    ids=["length", "chunked", "gzip", "until-close"],
)
def test_an_answer_is_read_whatever_its_framing(answer: bytes) -> None:
    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        conn.sendall(answer)
        return b"Connection: close" not in answer

    with server(send) as (url, requests, _):
        response = post(url)
    assert response.status_code == 202 and response.json() == {"accepted": 2}
    head = requests[0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"post /v1/events http/1.1") and b"idempotency-key: key-1" in head
    assert requests[0].endswith(b'{"events":[]}')


def test_a_kept_alive_connection_the_server_closed_is_replaced_and_the_request_made_once() -> None:
    """The server closes each connection after its answer without saying so: the next request, on the
    connection kept alive, gets no answer, and goes once more on a new one."""

    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        conn.sendall(reply(202, b"{}", b"Content-Length: 2"))
        return False  # and close, silently

    with server(send) as (url, requests, accepted):
        http = SyncHTTP(BaseClient(api_key="k", base_url=url))
        try:
            for key in ("key-1", "key-2", "key-3"):
                assert http.post("/v1/events", content=b"{}", idempotency_key=key, max_retries=0).status_code == 202
        finally:
            http.close()
    keys = [line for r in requests for line in r.split(b"\r\n") if line.lower().startswith(b"idempotency-key")]
    assert [k.split(b":")[1].strip() for k in keys] == [b"key-1", b"key-2", b"key-3"]  # each once
    assert accepted[0] == 3


def test_a_ledger_that_does_not_answer_times_out_and_one_that_is_not_there_cannot_be_reached() -> None:
    silent = threading.Event()

    def hang(conn: socket.socket, request: bytes, index: int) -> bool:
        silent.wait(5)
        return False

    with server(hang) as (url, _, _):
        with pytest.raises(APITimeoutError):
            post(url, timeout=0.3)
        silent.set()
    with pytest.raises(APIConnectionError):
        post(f"http://127.0.0.1:{free_port()}")


def test_other_requests_and_a_users_transport_go_through_httpx() -> None:
    """Only POSTs with an idempotency key take the short path; a GET (reads) goes through httpcore."""
    seen: list[str] = []

    class Spy(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.method)
            return super().handle_request(request)

    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        conn.sendall(reply(200, b"{}", b"Content-Length: 2"))
        return True

    with server(send) as (url, requests, _):
        transport = PlainTransport(Spy(), httpx.Timeout(5.0).as_dict())
        try:
            get = httpx.Request("GET", url + "/v1/sessions")
            assert transport.handle_request(get).status_code == 200
            keyed = httpx.Request("POST", url + "/v1/events", content=b"{}", headers={"Idempotency-Key": "k"})
            response = transport.handle_request(keyed)
            response.read()
            assert response.status_code == 200
        finally:
            transport.close()
    assert seen == ["GET"] and len(requests) == 2
    with httpx.MockTransport(lambda request: httpx.Response(200)) as users:
        http = SyncHTTP(BaseClient(api_key="k", base_url="http://127.0.0.1:1"), transport=users)
        assert http.client() is not None and http._direct is users  # the user's transport, as it is
        http.close()


def test_a_test_double_of_httpcore_sees_every_request_as_before() -> None:
    """respx (and the like) fake httpx by patching how httpcore sends: our own transport then sends that way too,
    so that a user's tests that fake the ledger see what the SDK sends (nothing listens on this port)."""
    import respx

    from agent_ledger_sdk import AgentLedgerClient

    url = f"http://127.0.0.1:{free_port()}"
    with respx.mock(base_url=url, assert_all_called=False) as fake:
        started = fake.post("/v1/sessions").respond(201, json={"id": "s1"})
        logged = fake.post("/v1/events").respond(202, json={"accepted": 1})
        client = AgentLedgerClient(api_key="al_local_abcdefabcdef_secret", base_url=url, max_retries=0)
        try:
            assert client.start_session("bot") == "s1"
            client.log_tool_call("s1", {"stepIndex": 0, "toolName": "search", "toolInput": {"q": "x"}})
        finally:
            client.close()
    assert started.call_count == 1 and logged.call_count == 1
    assert started.calls.last.request.headers["idempotency-key"].startswith("agent-ledger-")
