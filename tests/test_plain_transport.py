"""Our own transport to a plain-HTTP ledger: the idempotent POSTs in one write and blocking reads."""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import httpx
import pytest

from agent_ledger_sdk._base_client import BaseClient
from agent_ledger_sdk._exceptions import APIConnectionError, APITimeoutError
from agent_ledger_sdk._http import AsyncHTTP, PlainTransport, SyncHTTP

from .subprocesses import free_port, python

Answer = Callable[[socket.socket, bytes, int], bool]  # (connection, request, index) -> keep the connection open


def keys_sent(requests: list[bytes]) -> list[bytes]:
    """The Idempotency-Key header line of each request, in order."""
    return [line for request in requests for line in request.split(b"\r\n") if line.startswith(b"Idempotency-Key")]


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
    it read, and how many connections it accepted (``[0]``) and saw closed by the client (``[1]``)."""
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []
    accepted = [0, 0]

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    request = read_request(conn)
                except OSError:
                    request = b""
                if not request:
                    accepted[1] += 1
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


@pytest.mark.parametrize(
    "answer",
    [
        reply(202, b'{"accepted":2}', b"Content-Length: fourteen"),
        reply(202, b'{"accepted":2}', b"Content-Length: -14"),
        reply(202, b'zz\r\n{"accepted":2}\r\n0\r\n\r\n', b"Transfer-Encoding: chunked"),
    ],
    ids=["length-not-a-number", "length-negative", "chunk-size-not-hex"],
)
def test_an_answer_with_a_malformed_length_is_the_servers_error_not_a_crash(answer: bytes) -> None:
    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        conn.sendall(answer)
        return False

    with server(send) as (url, _, _):
        with pytest.raises(APIConnectionError, match="Malformed length"):
            post(url)


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


# -- post_for_json: a reservation's request made as bytes -----------------------------------------------------

RESERVATION = {"sessionId": "s1", "provider": "openai", "model": "gpt-4o", "maxCostUsd": 0.5, "note": "ünï ✓"}


def _header_lines(request: bytes, drop_key: bool = True) -> tuple[list[bytes], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    kept = [line.lower() for line in lines[1:] if not (drop_key and line.lower().startswith(b"idempotency-key"))]
    return [lines[0], *sorted(kept)], body


@pytest.mark.parametrize(
    "default_headers",
    [{}, {"X-Team": "billing", "Content-Type": "text/plain", "Idempotency-Key": "theirs"}],
    ids=["plain", "user-headers"],
)
def test_post_for_json_sends_what_post_sends_header_for_header(default_headers: dict[str, str]) -> None:
    """The bytes made without httpx's models are httpx's request: the same request line, headers (any order) and
    body, the idempotency key given; also when the user's default headers name the ones the SDK sets."""

    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        conn.sendall(reply(201, b'{"id":"r"}', b"Content-Length: 10"))
        return True

    with server(send) as (url, requests, _):
        http = SyncHTTP(BaseClient(api_key="k", base_url=url, default_headers=default_headers))
        try:
            assert http._plain_transport() is not None
            assert http.post("/v1/reservations", RESERVATION, idempotency_key="key-a", max_retries=0).json() == {
                "id": "r"
            }
            for key in ("key-b", "key-c"):  # the second from the kept head
                assert http.post_for_json("/v1/reservations", RESERVATION, idempotency_key=key) == {"id": "r"}
        finally:
            http.close()
    by_httpx, by_bytes, again = (_header_lines(request) for request in requests)
    assert by_bytes == by_httpx and again == by_httpx
    keys = keys_sent(requests)
    assert keys == [b"Idempotency-Key: key-a", b"Idempotency-Key: key-b", b"Idempotency-Key: key-c"]


EMPTY = b""
ANSWERS = pytest.mark.parametrize(  # a reservation's answer, in every framing, and bodies that are no JSON
    "answer",
    [
        reply(201, b'{"id":"r1","reservedUsd":0.5}', b"Content-Length: 29"),
        reply(201, b'5\r\n{"id"\r\n6\r\n:"r1"}\r\n0\r\n\r\n', b"Transfer-Encoding: chunked"),
        reply(201, GZIPPED, b"Content-Encoding: gzip", b"Content-Length: %d" % len(GZIPPED)),
        reply(201, b'{"id":"r1"}', b"Connection: close"),
        reply(201, EMPTY, b"Content-Length: 0"),
        reply(204, EMPTY),
        reply(201, b"not json", b"Content-Length: 8"),
        reply(201, b"\xff\xfe{", b"Content-Length: 3"),
    ],
    ids=["length", "chunked", "gzip", "until-close", "empty", "no-content", "not-json", "not-utf8"],
)


REFUSED = b'{"error":"Daily budget exceeded","details":{"agentName":"a","dailyLimitUsd":1,"spentTodayUsd":1}}'


def busy_then_granted_then_refused(conn: socket.socket, request: bytes, index: int) -> bool:
    """A 503 (retried), a 201, then a budget's 429 (the guardrail: never retried)."""
    if index == 0:
        conn.sendall(reply(503, b'{"error":"busy"}', b"Content-Length: 16"))
    elif index == 1:
        conn.sendall(reply(201, b'{"id":"r"}', b"Content-Length: 10"))
    else:
        conn.sendall(reply(429, REFUSED, b"Content-Length: %d" % len(REFUSED)))
    return True


@ANSWERS
def test_post_for_json_reads_every_answer_as_post_and_parse_success_do(answer: bytes) -> None:
    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        conn.sendall(answer)
        return b"Connection: close" not in answer

    with server(send) as (url, _, _):
        http = SyncHTTP(BaseClient(api_key="k", base_url=url))
        try:
            expected = http.config._parse_success(
                http.post("/v1/reservations", RESERVATION, idempotency_key="a", max_retries=0)
            )
            assert http.post_for_json("/v1/reservations", RESERVATION, idempotency_key="b", max_retries=0) == expected
        finally:
            http.close()


def test_post_for_json_hands_an_error_answer_or_a_failure_to_posts_retries(retry_sleeps: list[float]) -> None:
    """A 503 is retried (after its backoff) with the same key; a budget's 429 is the guardrail, not retried;
    a ledger that is not there is a connection error after the retries."""
    from agent_ledger_sdk import BudgetGuardrailError

    with server(busy_then_granted_then_refused) as (url, requests, _):
        http = SyncHTTP(BaseClient(api_key="k", base_url=url))
        try:
            assert http.post_for_json("/v1/reservations", RESERVATION, idempotency_key="k1", max_retries=2) == {
                "id": "r"
            }
            assert len(retry_sleeps) == 1
            with pytest.raises(BudgetGuardrailError) as raised:
                http.post_for_json("/v1/reservations", RESERVATION, idempotency_key="k2", max_retries=2)
            assert raised.value.details is not None and raised.value.details.agent_name == "a"
        finally:
            http.close()
    keys = keys_sent(requests)
    assert keys == [b"Idempotency-Key: k1", b"Idempotency-Key: k1", b"Idempotency-Key: k2"]
    assert len(retry_sleeps) == 1
    http = SyncHTTP(BaseClient(api_key="k", base_url=f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(APIConnectionError):
            http.post_for_json("/v1/reservations", RESERVATION, idempotency_key="k3", max_retries=2)
    finally:
        http.close()
    assert len(retry_sleeps) == 3


# -- the same on an event loop: AsyncHTTP.post_for_json over AsyncPlainExchange ---------------------------------


def _async_http(url: str, **options: Any) -> AsyncHTTP:
    http = AsyncHTTP(BaseClient(api_key="k", base_url=url, **options))
    assert http._plain is not None
    return http


@pytest.mark.parametrize(
    "default_headers",
    [{}, {"X-Team": "billing", "Content-Type": "text/plain", "Idempotency-Key": "theirs"}],
    ids=["plain", "user-headers"],
)
def test_async_post_for_json_sends_what_post_sends_header_for_header(default_headers: dict[str, str]) -> None:
    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        conn.sendall(reply(201, b'{"id":"r"}', b"Content-Length: 10"))
        return True

    async def main(url: str) -> None:
        http = _async_http(url, default_headers=default_headers)
        try:
            response = await http.post("/v1/reservations", RESERVATION, idempotency_key="key-a", max_retries=0)
            assert response.json() == {"id": "r"}
            for key in ("key-b", "key-c"):
                assert await http.post_for_json("/v1/reservations", RESERVATION, idempotency_key=key) == {"id": "r"}
        finally:
            await http.aclose()

    with server(send) as (url, requests, accepted):
        asyncio.run(main(url))
    by_httpx, by_bytes, again = (_header_lines(request) for request in requests)
    assert by_bytes == by_httpx and again == by_httpx
    assert accepted[0] == 2  # httpx's connection, then ours, kept alive for the third request


@ANSWERS
def test_async_post_for_json_reads_every_answer_as_post_and_parse_success_do(answer: bytes) -> None:
    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        conn.sendall(answer)
        return b"Connection: close" not in answer

    async def main(url: str) -> None:
        http = _async_http(url)
        try:
            response = await http.post("/v1/reservations", RESERVATION, idempotency_key="a", max_retries=0)
            expected = http.config._parse_success(response)
            got = await http.post_for_json("/v1/reservations", RESERVATION, idempotency_key="b", max_retries=0)
            assert got == expected
        finally:
            await http.aclose()

    with server(send) as (url, _, _):
        asyncio.run(main(url))


@pytest.mark.parametrize(
    "answer",
    [
        reply(202, b'{"accepted":2}', b"Content-Length: fourteen"),
        reply(202, b'zz\r\n{"accepted":2}\r\n0\r\n\r\n', b"Transfer-Encoding: chunked"),
        b"HTTP/1.1 nope\r\n\r\n",
    ],
    ids=["length-not-a-number", "chunk-size-not-hex", "status-not-a-number"],
)
def test_async_post_for_json_takes_a_malformed_answer_for_the_servers_error(answer: bytes) -> None:
    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        conn.sendall(answer)
        return False

    async def main(url: str) -> None:
        http = _async_http(url)
        try:
            with pytest.raises(APIConnectionError, match="Malformed"):
                await http.post_for_json("/v1/reservations", RESERVATION, idempotency_key="a", max_retries=0)
        finally:
            await http.aclose()

    with server(send) as (url, _, _):
        asyncio.run(main(url))


def test_async_post_for_json_replaces_a_connection_the_server_closed_and_asks_once() -> None:
    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        conn.sendall(reply(201, b"{}", b"Content-Length: 2"))
        return False  # and close, silently

    async def main(url: str) -> None:
        http = _async_http(url)
        try:
            for key in ("key-1", "key-2", "key-3"):
                assert await http.post_for_json("/v1/reservations", {}, idempotency_key=key, max_retries=0) == {}
        finally:
            await http.aclose()

    with server(send) as (url, requests, accepted):
        asyncio.run(main(url))
    keys = keys_sent(requests)
    assert keys == [b"Idempotency-Key: key-1", b"Idempotency-Key: key-2", b"Idempotency-Key: key-3"]
    assert accepted[0] == 3


def test_async_post_for_json_times_out_and_says_when_nothing_is_there(retry_sleeps: list[float]) -> None:
    silent = threading.Event()

    def hang(conn: socket.socket, request: bytes, index: int) -> bool:
        silent.wait(5)
        return False

    async def main(url: str, timeout: float, error: type[Exception]) -> None:
        http = _async_http(url, timeout=timeout)
        try:
            with pytest.raises(error):  # no retry: a retry goes through httpx, whose own timeout would say it
                await http.post_for_json("/v1/reservations", {}, idempotency_key="k", max_retries=0)
        finally:
            await http.aclose()

    with server(hang) as (url, requests, _):
        began = time.monotonic()
        asyncio.run(main(url, 0.3, APITimeoutError))
        assert time.monotonic() - began < 3
        silent.set()
    assert len(requests) == 1 and retry_sleeps == []
    asyncio.run(main(f"http://127.0.0.1:{free_port()}", 5.0, APIConnectionError))


def test_async_post_for_json_retries_a_503_and_stops_at_a_budgets_429(retry_sleeps: list[float]) -> None:
    from agent_ledger_sdk import BudgetGuardrailError

    async def main(url: str) -> None:
        http = _async_http(url)
        try:
            assert await http.post_for_json("/v1/reservations", {}, idempotency_key="k1", max_retries=2) == {"id": "r"}
            with pytest.raises(BudgetGuardrailError):
                await http.post_for_json("/v1/reservations", {}, idempotency_key="k2", max_retries=2)
        finally:
            await http.aclose()

    with server(busy_then_granted_then_refused) as (url, requests, _):
        asyncio.run(main(url))
    keys = keys_sent(requests)
    assert keys == [b"Idempotency-Key: k1", b"Idempotency-Key: k1", b"Idempotency-Key: k2"]
    assert len(retry_sleeps) == 1


def test_async_post_for_json_cancelled_midway_closes_its_connection_and_the_next_loop_reuses_a_kept_one() -> None:
    """A request cancelled while it awaits the answer closes its socket (its answer would be read by the next
    request otherwise); a socket kept alive serves the next request on another event loop (asyncio.run)."""
    release = threading.Event()

    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        if b"Idempotency-Key: slow" in request:
            release.wait(5)
        conn.sendall(reply(201, b'{"n":%d}' % index, b"Content-Length: 7"))
        return True

    with server(send) as (url, _, accepted):
        http = _async_http(url)

        async def cancelled() -> None:
            task = asyncio.ensure_future(http.post_for_json("/v1/reservations", {}, idempotency_key="slow"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert http._plain is not None and http._plain._idle == []

        async def one(key: str) -> Any:
            return await http.post_for_json("/v1/reservations", {}, idempotency_key=key)

        asyncio.run(cancelled())
        release.set()
        assert asyncio.run(one("after")) == {"n": 1}
        assert asyncio.run(one("again")) == {"n": 2}  # another loop, the socket kept
        asyncio.run(http.aclose())
    assert accepted[0] == 2


def test_async_post_for_json_under_a_test_double_goes_through_httpx() -> None:
    import respx

    url = f"http://127.0.0.1:{free_port()}"

    async def main() -> Any:
        http = _async_http(url)
        try:
            return await http.post_for_json("/v1/reservations", {}, idempotency_key="k", max_retries=0)
        finally:
            await http.aclose()

    with respx.mock(base_url=url) as fake:
        reserved = fake.post("/v1/reservations").respond(201, json={"id": "faked"})
        assert asyncio.run(main()) == {"id": "faked"}
    assert reserved.call_count == 1


def test_async_post_for_json_on_a_loop_that_cannot_watch_sockets_goes_through_httpx_with_the_same_key() -> None:
    """A loop without ``add_reader`` (Windows' proactor, some custom loops): the request already sent goes once
    more through httpx with the same Idempotency-Key (the ledger answers it once), and from then on httpx's way."""

    class NoWatching(asyncio.SelectorEventLoop):
        def add_reader(self, *args: Any) -> None:
            raise NotImplementedError

        def add_writer(self, *args: Any) -> None:
            raise NotImplementedError

    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        time.sleep(0.05)  # the answer is awaited, not there at the first read
        conn.sendall(reply(201, b'{"id":"r"}', b"Content-Length: 10"))
        return True

    async def main(http: AsyncHTTP) -> None:
        for key in ("k1", "k2"):
            assert await http.post_for_json("/v1/reservations", {}, idempotency_key=key, max_retries=0) == {"id": "r"}
        assert http._plain is None
        await http.aclose()

    with server(send) as (url, requests, _):
        loop = NoWatching()
        try:
            loop.run_until_complete(main(_async_http(url)))
        finally:
            loop.close()
    keys = keys_sent(requests)
    assert keys == [b"Idempotency-Key: k1", b"Idempotency-Key: k1", b"Idempotency-Key: k2"]


def test_an_async_fan_out_opens_at_most_max_open_sockets_of_its_own_and_keeps_at_most_max_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """300 reservations at once: past AsyncPlainExchange.MAX_OPEN under way, requests wait in httpx's pool
    rather than opening a socket each (a fan-out of thousands would run out of descriptors); every one is
    answered, and no more than MAX_KEPT of its sockets stay open after."""
    from agent_ledger_sdk import _http
    from agent_ledger_sdk._http import AsyncPlainExchange

    opened: list[int] = []
    connect = _http._aconnect

    async def counted(*args: Any) -> socket.socket:
        opened.append(1)
        return await connect(*args)

    monkeypatch.setattr(_http, "_aconnect", counted)
    gate = threading.Event()

    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        gate.wait(10)  # hold every answer until the fan-out is under way
        conn.sendall(reply(201, b'{"id":"r"}', b"Content-Length: 10"))
        return True

    async def main(url: str) -> None:
        http = _async_http(url)
        assert http._plain is not None
        calls = [
            asyncio.ensure_future(http.post_for_json("/v1/reservations", {}, idempotency_key=f"k{n}", max_retries=0))
            for n in range(300)
        ]
        while len(requests) < 200:  # ours, then httpx's pool (its max_connections)
            await asyncio.sleep(0.01)
        assert http._plain.in_use == AsyncPlainExchange.MAX_OPEN
        gate.set()
        assert await asyncio.gather(*calls) == [{"id": "r"}] * 300
        assert http._plain.in_use == 0 and len(http._plain._idle) <= AsyncPlainExchange.MAX_KEPT
        await http.aclose()

    with server(send) as (url, requests, _):
        asyncio.run(main(url))
    assert len(requests) == 300
    assert len(opened) == AsyncPlainExchange.MAX_OPEN


FORKED_CLIENT = """
import asyncio, os, sys, warnings
from agent_ledger_sdk import AgentLedgerClient, AsyncAgentLedgerClient

warnings.simplefilter("always", ResourceWarning)  # a socket left open says so on stderr

url, kind = sys.argv[1], sys.argv[2]
if kind == "sync":
    client = AgentLedgerClient(api_key="k", base_url=url, max_retries=0)
    ask = lambda key: client._http.post_for_json("/v1/reservations", {}, idempotency_key=key, max_retries=0)
else:
    client = AsyncAgentLedgerClient(api_key="k", base_url=url, max_retries=0)
    ask = lambda key: asyncio.run(
        client._http.post_for_json("/v1/reservations", {}, idempotency_key=key, max_retries=0)
    )
assert ask("parent-1") == {"for": "parent-1"}  # its connection kept alive
pid = os.fork()
if pid == 0:
    os._exit(0 if ask("child") == {"for": "child"} else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert ask("parent-2") == {"for": "parent-2"}
client.close() if kind == "sync" else asyncio.run(client.aclose())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_forked_child_of_a_users_client_opens_a_connection_of_its_own(kind: str) -> None:
    """A kept-alive socket is one TCP connection: a parent and a child that both wrote on it would read each
    other's answers (a reservation granted to the other process). The child opens its own, and the parent
    keeps using its connection. The child's copy of the parent's socket is closed, not left to the garbage
    collector ("unclosed socket")."""

    def send(conn: socket.socket, request: bytes, index: int) -> bool:
        key = keys_sent([request])[0].split(b": ")[1]
        body = b'{"for":"%s"}' % key
        conn.sendall(reply(201, body, b"Content-Length: %d" % len(body)))
        return True

    with server(send) as (url, requests, accepted):
        result = subprocess.run([*python(FORKED_CLIENT), url, kind], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "ResourceWarning" not in result.stderr, result.stderr
        assert keys_sent(requests) == [b"Idempotency-Key: " + k for k in (b"parent-1", b"child", b"parent-2")]
        assert accepted[0] == 2  # the parent's connection, and the child's own


def ledger_answer(conn: socket.socket, request: bytes, index: int) -> bool:
    """What the ledger answers the helpers' requests: a session, events accepted, a session ended."""
    path = request.split(b" ", 2)[1]
    body = b'{"id":"s1"}' if path == b"/v1/sessions" else b"{}"
    conn.sendall(reply(201 if path == b"/v1/sessions" else 202, body, b"Content-Length: %d" % len(body)))
    return True


def test_the_async_clients_aclose_closes_the_connections_its_sender_kept() -> None:
    """Without a transport of the user's, the async client's sender thread delivers with a blocking client of
    its own (off the user's loop); ``aclose()`` closes that client's kept connections too."""
    from agent_ledger_sdk import AsyncAgentLedgerClient

    with server(ledger_answer) as (url, requests, accepted):

        async def main() -> None:
            client = AsyncAgentLedgerClient(api_key="k", base_url=url)

            @client.tool
            async def lookup(x: int) -> int:
                return x

            async with client.session("closing"):
                assert await lookup(1) == 1
            assert await client.aflush(10) == 0
            assert accepted[0] >= 1 and accepted[1] < accepted[0]  # a connection is kept alive for the next batch
            await client.aclose()

        asyncio.run(main())
        deadline = time.monotonic() + 10
        while accepted[1] < accepted[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert accepted[1] == accepted[0]
        paths = [r.split(b" ", 2)[1] for r in requests]
        assert paths[0] == b"/v1/sessions" and paths[-1] == b"/v1/sessions/s1/end"
        assert set(paths[1:-1]) == {b"/v1/events"}


def test_an_async_client_used_by_loops_of_several_threads_at_once_keeps_one_connection_a_loop() -> None:
    """Each event loop has an httpx client of its own (a connection opened on one loop fails on another), kept
    for as long as the loop runs: four threads that each run a loop at once open four connections, and each is
    closed as its loop shuts down."""
    from agent_ledger_sdk import AsyncAgentLedgerClient

    with server(ledger_answer) as (url, requests, accepted):
        client = AsyncAgentLedgerClient(api_key="k", base_url=url)

        async def one() -> None:
            session_id = await client.start_session("threads")
            for step in range(10):
                await client.log_tool_call(session_id, {"toolName": "t", "stepIndex": step, "toolInput": {}})
                await asyncio.sleep(0.001)  # the other loops run meanwhile
            await client.end_session(session_id, "success")

        threads = [threading.Thread(target=asyncio.run, args=(one(),)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(requests) == 4 * 12
        assert accepted[0] == 4
        deadline = time.monotonic() + 10
        while accepted[1] < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert accepted[1] == 4  # closed with their loops, before any aclose()
