"""The I/O of the clients: one POST with retries, sync and async, and nothing else.

:class:`SyncHTTP` and :class:`AsyncHTTP` move bytes for a
:class:`~agent_ledger_sdk._base_client.BaseClient`, which decides everything
that needs no I/O (requests, retries, errors). They also offer the three
calls the instrumentation's delivery needs (start a session, send encoded
events, end a session) with an explicit idempotency key, so that a batch
retried later (even by another process, from the journal) is the same request.

:class:`LoopBridge` lets the background sender thread send through an
:class:`AsyncHTTP`: on the event loop the async client is used on, so that the
user's async transport or ``http_client`` carries everything the client sends.
Without one of the user's, the async client's sender thread sends with a
:class:`SyncHTTP` of its own instead, off the user's loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, AsyncGenerator, Callable, Generator, Optional, Protocol, Union

import httpx

from ._events import events_body
from ._exceptions import AgentLedgerError

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Coroutine

    from ._base_client import BaseClient

# The test seams for backoff waits.
_sleep: Callable[[float], None] = time.sleep


async def _async_sleep(delay: float) -> None:
    import asyncio  # imported on first use: asyncio costs ~35 ms of import time

    await asyncio.sleep(delay)


# httpx writes a request's headers and body separately; with Nagle's algorithm on,
# the body then waits for the server's delayed ACK (40 ms on Linux) on every request.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

SESSION_KEY_PREFIX = "agent-ledger-session-"


# What starting a session tells: its id, and whether a budget applies to it (None: the ledger did not say).
Started = tuple[str, Optional[bool]]


def _request(
    config: BaseClient,
    user_client: Union[httpx.Client, httpx.AsyncClient, None],
    method: str,
    path: str,
    body: Any,
    content: Optional[bytes],
    idempotency_key: Optional[str],
) -> httpx.Request:
    """One logical request; built by the user's client, when there is one, so its headers, auth and settings apply."""
    request = config._build_request(method, path, body, content, idempotency_key)
    if user_client is not None:
        request = user_client.build_request(method, request.url, headers=request.headers, content=request.content)
    return request


def _exchange(
    handle: Callable[[httpx.Request], httpx.Response], request: httpx.Request, timeouts: dict[str, Any]
) -> httpx.Response:
    """What ``httpx.Client.send`` does around a transport that has no auth, hooks, cookies or redirects."""
    request.extensions.setdefault("timeout", timeouts)
    response = handle(request)
    response.request = request
    try:
        response.read()
    except BaseException:
        response.close()
        raise
    return response


async def _aexchange(
    transport: httpx.AsyncBaseTransport, request: httpx.Request, timeouts: dict[str, Any]
) -> httpx.Response:
    request.extensions.setdefault("timeout", timeouts)
    response = await transport.handle_async_request(request)
    response.request = request
    try:
        await response.aread()
    except BaseException:
        await response.aclose()
        raise
    return response


def _on_awaiting_answer(call: Callable[[], None]) -> Callable[[str, dict[str, Any]], None]:
    """An httpcore ``trace`` extension that calls ``call`` when the request is written and the answer awaited."""

    def trace(name: str, info: dict[str, Any]) -> None:
        if name.endswith(".receive_response_headers.started"):
            call()

    return trace


class _NothingReceived(Exception):
    """The connection ended before any byte of an answer (a kept-alive connection the server had closed)."""


_HEAD_END = b"\r\n\r\n"
_NO_BODY = (204, 304)


def _timeval(seconds: Optional[float]) -> bytes:
    whole = 0.0 if seconds is None else max(seconds, 0.001)
    return struct.pack("ll", int(whole), int((whole - int(whole)) * 1_000_000))


def _sending_is_faked() -> bool:
    """Whether a test double replaced how httpx sends (respx, pytest-httpx and the like patch httpcore's
    ``ConnectionPool.handle_request`` or httpx's ``HTTPTransport.handle_request``): then every request goes that
    way, so that a user's tests that fake the ledger see what the SDK sends, as they did before this transport."""
    pool = sys.modules.get("httpcore._sync.connection_pool")
    if pool is not None and getattr(pool.ConnectionPool.handle_request, "__module__", None) != pool.__name__:
        return True
    # (A name, not the module seen at import: a double in place before this module is imported is seen too; if
    # httpx ever moves it, requests only lose this transport's speed.)
    return getattr(httpx.HTTPTransport.handle_request, "__module__", None) != "httpx._transports.default"


class _IdleSockets:
    """Connections kept alive between requests, by host and port, the latest kept taken first (any thread);
    at most :attr:`MAX_KEPT` (httpx's own default), the others closed as they come back."""

    MAX_KEPT = 20

    def __init__(self) -> None:
        self._idle: list[tuple[str, int, socket.socket]] = []
        self._lock = threading.Lock()

    def _take(self, host: str, port: int) -> Optional[socket.socket]:
        with self._lock:
            for position in range(len(self._idle) - 1, -1, -1):
                if self._idle[position][:2] == (host, port):
                    return self._idle.pop(position)[2]
        return None

    def _keep(self, host: str, port: int, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self.MAX_KEPT:
                self._idle.append((host, port, sock))
                return
        sock.close()

    def forget(self) -> None:
        """After fork(): the parent's sockets are not ours to use. The child's copies of their descriptors are
        closed (the parent's connections stay open: a connection ends with the last descriptor of it)."""
        idle, self._idle = self._idle, []
        self._lock = threading.Lock()
        for _, _, sock in idle:
            sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, _, sock in idle:
            sock.close()


class PlainTransport(_IdleSockets, httpx.BaseTransport):
    """HTTP/1.1 over plain TCP for the ledger's idempotent POSTs (those with an ``Idempotency-Key``): the
    request in one write, the answer in blocking reads; everything else goes to ``fallback`` (httpcore).

    Why: a thread leaves the GIL at each socket call and waits for it to come back, up to the switch
    interval behind a busy agent thread. httpcore makes twelve such calls a request (two readability
    polls, a poll before each write and read, headers and body written apart); this makes two or three
    (the write, the answer's head and its body). The timeouts are the kernel's (``SO_RCVTIMEO``,
    ``SO_SNDTIMEO``) on a blocking socket, so that Python polls nothing. A connection kept alive that the
    server closed meanwhile fails before any byte of the answer: the request goes once more on a new one
    (the ledger records a key once).
    """

    def __init__(self, fallback: httpx.BaseTransport, timeouts: dict[str, Any]) -> None:
        super().__init__()
        self._fallback = fallback
        self._timeouts = timeouts

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if (
            url.scheme != "http"
            or request.method != "POST"
            or "idempotency-key" not in request.headers
            or _sending_is_faked()
        ):
            return self._fallback.handle_request(request)
        timeouts = request.extensions.get("timeout") or self._timeouts
        content = request.read()
        head = [b"POST ", url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        status, headers, body = self.exchange(url, b"".join(head) + content, timeouts, request)
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(body),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    def exchange(
        self, url: httpx.URL, data: bytes, timeouts: dict[str, Any], request: Optional[httpx.Request] = None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """``data`` (a whole request) sent in one write; the answer's status, headers and body (see
        :func:`_read_answer`). ``request``: the httpx request it is, if one was made (errors name it)."""
        trace = request.extensions.get("trace") if request is not None else None
        host, port = url.host, url.port or 80
        while True:
            sock, reused = self._connection(host, port, timeouts, request)
            try:
                try:
                    sock.sendall(data)
                except BlockingIOError as exc:
                    raise httpx.WriteTimeout(str(exc) or "write timed out", request=request) from exc
                except OSError as exc:
                    if reused:
                        raise _NothingReceived from exc
                    raise httpx.WriteError(str(exc), request=request) from exc
                if trace is not None:
                    trace("http11.receive_response_headers.started", {"request": request})
                status, headers, body, keep = _read_answer(sock, request)
            except _NothingReceived as exc:
                sock.close()
                if reused:
                    continue  # a kept-alive connection the server had closed: once more on a new one
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                ) from exc
            except BaseException:
                sock.close()
                raise
            if keep:
                self._keep(host, port, sock)
            else:
                sock.close()
            return status, headers, body

    def _connection(
        self, host: str, port: int, timeouts: dict[str, Any], request: Optional[httpx.Request]
    ) -> tuple[socket.socket, bool]:
        kept = self._take(host, port)
        if kept is not None:
            return kept, True
        try:
            sock = socket.create_connection((host, port), timeout=timeouts.get("connect"))
        except socket.timeout as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeouts.get("read")))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeouts.get("write")))
        sock.settimeout(None)  # blocking: the kernel keeps the time, Python polls nothing
        return sock, False

    def close(self) -> None:
        super().close()
        self._fallback.close()


Answer = tuple[int, list[tuple[bytes, bytes]], bytes, bool]


def _read_answer(sock: socket.socket, request: Optional[httpx.Request]) -> Answer:
    """Status, headers, body (as sent: chunked decoded, not decompressed), and whether the connection stays open:
    read from a blocking socket."""
    parser = _parse_answer(request)
    next(parser)
    received = False
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except OSError as exc:
            raise _read_failed(exc, received, request) from exc
        received = received or bool(chunk)
        answer = _fed(parser, chunk)
        if answer is not None:
            return answer


def _read_failed(exc: OSError, received: bool, request: Optional[httpx.Request]) -> Exception:
    """What a socket's error while reading an answer means: nothing received yet (a kept-alive connection the
    server had closed: try a new one), else the answer cut short."""
    return httpx.ReadError(str(exc), request=request) if received else _NothingReceived()


def _fed(parser: Generator[None, bytes, Answer], chunk: bytes) -> Optional[Answer]:
    """``chunk`` given to ``parser``: the answer, once it is whole."""
    try:
        parser.send(chunk)
    except StopIteration as done:
        answer: Answer = done.value
        return answer
    return None


def _parse_answer(request: Optional[httpx.Request]) -> Generator[None, bytes, Answer]:
    """The answer's parser, without I/O: each ``yield`` takes the next bytes received (empty: the connection
    ended); it returns what :func:`_read_answer` returns."""
    buffer = b""
    while True:
        chunk = yield
        if not chunk:
            if not buffer:
                raise _NothingReceived
            raise httpx.RemoteProtocolError("Server disconnected while sending its answer.", request=request)
        buffer += chunk
        end = buffer.find(_HEAD_END)
        if end >= 0:
            break
    lines = buffer[:end].split(b"\r\n")
    try:
        version, code = lines[0].split(b" ", 2)[:2]
        status = int(code)
        headers = [(name.strip(), value.strip()) for name, value in (line.split(b":", 1) for line in lines[1:])]
    except ValueError as exc:
        raise httpx.RemoteProtocolError(f"Malformed answer: {lines[0][:100]!r}", request=request) from exc
    fields = {name.lower(): value for name, value in headers}
    keep = version == b"HTTP/1.1" and fields.get(b"connection", b"").lower() != b"close"
    rest = buffer[end + 4 :]
    if status in _NO_BODY or 100 <= status < 200:
        return status, headers, b"", keep
    length = fields.get(b"content-length")
    if length is not None and b"chunked" not in fields.get(b"transfer-encoding", b"").lower():
        size = _number(length, 10, request)
        parts = [rest]
        got = len(rest)
        while got < size:
            chunk = yield
            if not chunk:
                raise httpx.RemoteProtocolError("Server disconnected while sending its answer.", request=request)
            parts.append(chunk)
            got += len(chunk)
        body = b"".join(parts)
        return status, headers, body[:size], keep and got == size
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        data = rest
        body_parts: list[bytes] = []
        while True:
            while b"\r\n" not in data:
                chunk = yield
                if not chunk:
                    raise httpx.RemoteProtocolError("Server disconnected while sending its answer.", request=request)
                data += chunk
            line, data = data.split(b"\r\n", 1)
            size = _number(line.split(b";", 1)[0], 16, request)
            while len(data) < size + 2:
                chunk = yield
                if not chunk:
                    raise httpx.RemoteProtocolError("Server disconnected while sending its answer.", request=request)
                data += chunk
            if size == 0:
                # Trailers, if any, end with an empty line; we kept none: close rather than read them.
                return status, headers, b"".join(body_parts), keep and data.startswith(b"\r\n") and len(data) == 2
            body_parts.append(data[:size])
            data = data[size + 2 :]
    parts = [rest]  # no length: the body ends with the connection
    while True:
        chunk = yield
        if not chunk:
            return status, headers, b"".join(parts), False
        parts.append(chunk)


def _number(text: bytes, base: int, request: Optional[httpx.Request]) -> int:
    """A length the answer gives (``Content-Length``, a chunk's size); a malformed one is the server's error."""
    try:
        value = int(text.strip(), base)
    except ValueError:
        value = -1
    if value < 0:
        raise httpx.RemoteProtocolError(f"Malformed length in the answer: {text[:40]!r}", request=request)
    return value


def _async_sending_is_faked() -> bool:
    """:func:`_sending_is_faked`, for httpx's asynchronous transport (respx patches both)."""
    pool = sys.modules.get("httpcore._async.connection_pool")
    if pool is not None and getattr(pool.AsyncConnectionPool.handle_async_request, "__module__", None) != pool.__name__:
        return True
    return getattr(httpx.AsyncHTTPTransport.handle_async_request, "__module__", None) != "httpx._transports.default"


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _LoopClient:
    """:class:`AsyncHTTP`'s own httpx client of one event loop."""

    __slots__ = ("closer", "http", "loop", "transport")

    def __init__(
        self,
        http: httpx.AsyncClient,
        transport: httpx.AsyncBaseTransport,
        loop: Callable[[], Optional[asyncio.AbstractEventLoop]],
    ) -> None:
        self.http = http
        self.transport = transport
        self.loop = loop  # a weak reference to the loop (or, off any asyncio loop, a function that gives None)
        self.closer: Optional[AsyncGenerator[None, None]] = None


def _no_loop() -> None:
    return None


_FORGOTTEN: list[_LoopClient] = []  # a forked child's inheritance, never closed (see AsyncHTTP.forget_connections)


def _closed_with_the_loop(http: httpx.AsyncClient, then: Callable[[], None]) -> AsyncGenerator[None, None]:
    """An async generator, started here on the running loop, that closes ``http`` and calls ``then`` when the
    loop shuts down.

    ``asyncio.run`` (and any runner that calls ``loop.shutdown_asyncgens()``) closes every async generator
    started on its loop before it closes the loop: so our client's connections are closed on their own loop,
    rather than found open by the garbage collector once the loop is gone ("unclosed transport"). Dropped
    while its loop runs, the generator is closed on that loop all the same (the loop's finalizer hook)."""

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            try:
                await http.aclose()
            finally:
                then()

    generator = closer()
    with contextlib.suppress(StopIteration):  # (how the step ends at a yield)
        generator.asend(None).send(None)  # to its yield: the loop's first-iteration hook now knows it
    return generator


def _on_asyncio() -> bool:
    """Whether an asyncio event loop runs this code (not trio's, say, which httpx also serves)."""
    return _running_loop() is not None


class AsyncPlainExchange(_IdleSockets):
    """:class:`PlainTransport`'s exchange on an event loop: the request in one write, the answer read as it
    comes, on plain non-blocking sockets kept alive between requests. A socket is watched only while a
    request awaits it, so a kept socket is not tied to a loop: the next request takes it on whichever loop
    it runs (the client may be used under several ``asyncio.run``). A request cancelled or failed midway
    closes its socket. Timeouts are httpx's (connect, write, read: each wait)."""

    MAX_OPEN = 100  # connections in use at once (httpx's own default); past it, requests go through httpx's pool

    def __init__(self) -> None:
        super().__init__()
        self.in_use = 0

    def forget(self) -> None:
        super().forget()
        self.in_use = 0

    def full(self) -> bool:
        """Whether :attr:`MAX_OPEN` requests are under way: a fan-out of many tasks then waits in httpx's pool
        rather than opening a socket each (and running out of descriptors)."""
        return self.in_use >= self.MAX_OPEN

    async def exchange(self, url: httpx.URL, data: bytes, timeouts: dict[str, Any]) -> Answer:
        with self._lock:
            self.in_use += 1
        try:
            return await self._exchange(url, data, timeouts)
        finally:
            with self._lock:
                self.in_use -= 1

    async def _exchange(self, url: httpx.URL, data: bytes, timeouts: dict[str, Any]) -> Answer:
        import asyncio

        loop = asyncio.get_running_loop()
        host, port = url.host, url.port or 80
        while True:
            sock, reused = await self._connection(loop, host, port, timeouts)
            try:
                try:
                    await _asend(loop, sock, data, timeouts.get("write"))
                except OSError as exc:
                    if reused:
                        raise _NothingReceived from exc
                    raise httpx.WriteError(str(exc)) from exc
                answer = await _aread_answer(loop, sock, timeouts.get("read"))
            except _NothingReceived as exc:
                sock.close()
                if reused:
                    continue  # a kept-alive connection the server had closed: once more on a new one
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from exc
            except BaseException:
                sock.close()
                raise
            if answer[3]:
                self._keep(host, port, sock)
            else:
                sock.close()
            return answer

    async def _connection(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int, timeouts: dict[str, Any]
    ) -> tuple[socket.socket, bool]:
        import asyncio

        kept = self._take(host, port)
        if kept is not None:
            return kept, True
        try:
            sock = await asyncio.wait_for(_aconnect(loop, host, port), timeouts.get("connect"))
        except asyncio.TimeoutError as exc:
            raise httpx.ConnectTimeout("connect timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        return sock, False


async def _aconnect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    error: Optional[OSError] = None
    for family, kind, proto, _, address in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            error = exc
            continue
        return sock
    raise error or OSError(f"no address for {host}:{port}")


async def _asend(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, timeout: Optional[float]) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            if not await _awaited(loop, sock, loop.add_writer, loop.remove_writer, timeout):
                raise httpx.WriteTimeout("write timed out") from None
            continue
        view = view[sent:]


async def _aread_answer(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: Optional[float]) -> Answer:
    """:func:`_read_answer` on a non-blocking socket, on ``loop``."""
    parser = _parse_answer(None)
    next(parser)
    received = False
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            if not await _awaited(loop, sock, loop.add_reader, loop.remove_reader, timeout):
                raise httpx.ReadTimeout("read timed out") from None
            continue
        except OSError as exc:
            raise _read_failed(exc, received, None) from exc
        received = received or bool(chunk)
        answer = _fed(parser, chunk)
        if answer is not None:
            return answer


async def _awaited(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, watch: Any, unwatch: Any, timeout: Optional[float]
) -> bool:
    """Whether ``sock`` became ready (read or write, as ``watch`` says) within ``timeout`` seconds."""
    waiter = loop.create_future()
    fd = sock.fileno()
    watch(fd, _settle, waiter, True)
    timer = loop.call_later(timeout, _settle, waiter, False) if timeout is not None else None
    try:
        ready: bool = await waiter
        return ready
    finally:
        unwatch(fd)
        if timer is not None:
            timer.cancel()


def _settle(waiter: asyncio.Future[bool], ready: bool) -> None:
    if not waiter.done():
        waiter.set_result(ready)


class LedgerIO(Protocol):
    """What delivery and budgets need from the ledger: idempotent calls."""

    def start_session(self, body: dict[str, Any], idempotency_key: str) -> Started: ...
    def send_events(
        self,
        session_id: str,
        encoded_events: list[str],
        idempotency_key: str,
        on_sent: Optional[Callable[[], None]] = None,
    ) -> Any: ...
    def end_session(self, session_id: str, body: dict[str, Any], idempotency_key: str) -> None: ...
    def reserve(self, body: dict[str, Any], idempotency_key: str) -> Any: ...


def started(config: BaseClient, response: httpx.Response) -> Started:
    session_id = config._session_id_from(response)
    body = config._parse_success(response)
    budgeted = body.get("budgeted") if isinstance(body, dict) else None
    return session_id, budgeted if isinstance(budgeted, bool) else None


def _request_bytes(config: BaseClient, path: str, body: Any, idempotency_key: str) -> tuple[httpx.URL, bytes, bytes]:
    """A JSON POST as the bytes :meth:`BaseClient._build_request` would send (see ``_request_head``): its URL,
    the whole request, and its body."""
    url, head = config._request_head(path)
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    data = b"".join(
        (
            head,
            b"Idempotency-Key: ",
            idempotency_key.encode("ascii"),
            b"\r\nContent-Length: ",
            str(len(content)).encode("ascii"),
            b"\r\n\r\n",
            content,
        )
    )
    return url, data, content


def _answered(
    config: BaseClient, path: str, body: Any, content: bytes, idempotency_key: str, answer: Answer
) -> tuple[Any, Optional[httpx.Response]]:
    """A successful answer's JSON (as ``BaseClient._parse_success`` reads it), or, for any other answer (an
    error, a compressed body), the httpx response it is, for the retries to decide on."""
    status, headers, received, _ = answer
    if 200 <= status < 300 and not any(name.lower() == b"content-encoding" for name, _ in headers):
        if not received:
            return None, None
        try:
            return json.loads(received), None
        except ValueError:
            return None, None
    request = _request(config, None, "POST", path, body, content, idempotency_key)
    response = httpx.Response(
        status,
        headers=headers,
        stream=httpx.ByteStream(received),
        request=request,
        extensions={"http_version": b"HTTP/1.1"},
    )
    response.read()
    return None, response


class SyncHTTP:
    """Blocking I/O over ``httpx.Client``: the user's ``http_client`` or ``transport``, else our own."""

    def __init__(
        self,
        config: BaseClient,
        *,
        transport: Optional[httpx.BaseTransport] = None,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        self.config = config
        self._transport = transport
        self._user_client = http_client
        self._http: Optional[httpx.Client] = None
        self._direct: Optional[httpx.BaseTransport] = None  # the transport of our own client
        self._timeouts = httpx.Timeout(config.timeout).as_dict()
        self._lock = threading.Lock()
        # Made now, in the parent: a forked child then never loads certificates while
        # another thread of its parent may have held OpenSSL's locks at the fork.
        self._ssl_context: Optional[ssl.SSLContext] = (
            httpx.create_ssl_context() if config.base_url.startswith("https") and transport is None else None
        )

    def client(self) -> httpx.Client:
        if self._user_client is not None:
            return self._user_client
        http = self._http
        if http is None:
            with self._lock:
                http = self._http
                if http is None:
                    transport = self._transport
                    if transport is None:
                        transport = httpx.HTTPTransport(socket_options=NO_DELAY, verify=self._ssl_context or True)
                        # (POSIX: SO_RCVTIMEO takes a timeval there; Windows' takes milliseconds.)
                        if self.config.base_url.startswith("http://") and os.name == "posix":
                            transport = PlainTransport(transport, self._timeouts)
                    self._direct = transport  # before the client: a thread that sees the client sees it too
                    http = self._http = httpx.Client(timeout=self.config.timeout, transport=transport)
        return http

    def send(self, request: httpx.Request) -> httpx.Response:
        """One exchange: through the user's ``http_client`` when there is one (its auth, event hooks, cookies
        and redirects apply), else straight to the transport (the user's ``transport``, or ours).

        Our own client has no auth, hooks, cookies, redirects or proxies (its transport is explicit), so
        what ``Client.send`` adds around the transport is only its timeout, which is set here; and it
        costs about 100 µs of CPU a request (measured in docs/performance.md). httpx's own INFO log line
        ("HTTP Request: ...") is not written on this path.
        """
        if self._user_client is not None:
            return self._user_client.send(request)
        http = self.client()
        transport = self._direct
        if transport is None:  # pragma: no cover - set with the client
            return http.send(request)
        return _exchange(transport.handle_request, request, self._timeouts)

    def forget_connections(self) -> None:
        """After fork(): the parent's sockets are not ours to use (nor to close)."""
        if isinstance(self._direct, PlainTransport):
            self._direct.forget()
        self._http = None
        self._direct = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None
                self._direct = None

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        content: Optional[bytes] = None,
        idempotency_key: Optional[str] = None,
        max_retries: Optional[int] = None,
        method: str = "POST",
        on_sent: Optional[Callable[[], None]] = None,
    ) -> httpx.Response:
        """``on_sent``: called once the request is written and its answer awaited (by our own transport; with
        the user's ``http_client``, never): another thread of ours may take the GIL from then on."""
        config = self.config
        retries = config.max_retries if max_retries is None else max_retries
        request = _request(config, self._user_client, method, path, body, content, idempotency_key)
        if on_sent is not None and self._user_client is None:
            request.extensions["trace"] = _on_awaiting_answer(on_sent)
        return self._retried(request, retries)

    def _retried(
        self,
        request: httpx.Request,
        retries: int,
        response: Optional[httpx.Response] = None,
        failure: Optional[httpx.TransportError] = None,
    ) -> httpx.Response:
        """``request`` until it succeeds or its retries are spent; ``response`` or ``failure``: its first
        attempt's outcome, when that was sent already."""
        config = self.config
        attempt = 0
        while True:
            error: AgentLedgerError
            if response is None and failure is None:
                try:
                    response = self.send(request)
                except httpx.TransportError as exc:
                    failure = exc
            if failure is not None:
                error = config._error_for_exception(failure, request)
            else:
                assert response is not None
                if response.is_success:
                    return response
                error = config._error_for_response(response)
            delay = config._retry_delay(error, attempt, retries)
            if delay is None:
                raise error
            config._log_retry(request, error, delay, attempt, retries)
            _sleep(delay)
            attempt += 1
            response = failure = None

    def post_for_json(self, path: str, body: Any, *, idempotency_key: str, max_retries: Optional[int] = None) -> Any:
        """:meth:`post` a JSON ``body``; the answer's JSON, as ``BaseClient._parse_success`` reads it.

        On our own transport over plain HTTP, the request's bytes are made here (the headers once, by
        ``BaseClient._request_head``) and a successful answer is read from the bytes received, with no httpx
        ``Request`` or ``Response``: they were about half of the caller's CPU for a budgeted LLM call's
        reservation, which the call waits on (docs/performance.md, "The ninth round"). Any other answer, or a
        failure to send, is handed to :meth:`post`'s retries as its first attempt."""
        plain = self._plain_transport()
        if plain is None:
            response = self.post(path, body, idempotency_key=idempotency_key, max_retries=max_retries)
            return self.config._parse_success(response)
        config = self.config
        retries = config.max_retries if max_retries is None else max_retries
        url, data, content = _request_bytes(config, path, body, idempotency_key)
        try:
            status, headers, answer = plain.exchange(url, data, self._timeouts)
        except httpx.TransportError as exc:
            request = _request(config, None, "POST", path, body, content, idempotency_key)
            return config._parse_success(self._retried(request, retries, failure=exc))
        parsed, other = _answered(config, path, body, content, idempotency_key, (status, headers, answer, True))
        if other is None:
            return parsed
        return config._parse_success(self._retried(other.request, retries, response=other))

    def _plain_transport(self) -> Optional[PlainTransport]:
        """Our own :class:`PlainTransport`, when every request goes to it (no ``http_client`` or
        ``transport`` of the user's, none faked by a test double)."""
        if self._user_client is not None or self._transport is not None:
            return None
        self.client()
        direct = self._direct
        if isinstance(direct, PlainTransport) and not _sending_is_faked():
            return direct
        return None


class AsyncHTTP:
    """Non-blocking I/O over ``httpx.AsyncClient``: the user's ``http_client`` or ``transport``, else our own."""

    def __init__(
        self,
        config: BaseClient,
        *,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        http_client: Optional[httpx.AsyncClient] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.config = config
        self._transport = transport
        self._user_client = http_client
        # One TLS context for the client's every loop (loading the certificates takes about 20 ms): the sync
        # client's of the same client when it has one (see AsyncAgentLedgerClient), else made at the first need.
        self._ssl_context = ssl_context
        # Our own httpx client of each event loop (see client()); None: the one made off any asyncio loop.
        self._clients: dict[Optional[int], _LoopClient] = {}
        self._timeouts = httpx.Timeout(config.timeout).as_dict()
        # Our own plain-HTTP exchange for a reservation (post_for_json); None: every request through httpx.
        self._plain: Optional[AsyncPlainExchange] = (
            AsyncPlainExchange()
            if transport is None
            and http_client is None
            and config.base_url.startswith("http://")
            and os.name == "posix"  # an event loop that watches sockets (Windows' proactor does not)
            else None
        )

    def client(self) -> httpx.AsyncClient:
        """The user's ``http_client``, else our own of the running loop."""
        if self._user_client is not None:
            return self._user_client
        return self._own().http

    def _own(self) -> _LoopClient:
        """Our own httpx client of the running loop, made the first time the loop asks.

        httpx's connections belong to the loop that opened them: on another loop (the client used under a
        second ``asyncio.run``, or by loops of several threads at once) they fail with "Event loop is
        closed". So each loop gets a client of its own, closed as that loop shuts down (see
        :func:`_closed_with_the_loop`), when it is also forgotten here."""
        loop = _running_loop()
        key = None if loop is None else id(loop)
        own = self._clients.get(key)
        if own is not None and own.loop() is loop:
            return own
        for stale_key, stale in list(self._clients.items()):  # loops closed without shutting down first
            stale_loop = stale.loop()
            if stale_key is not None and (stale_loop is None or stale_loop.is_closed()):
                self._clients.pop(stale_key, None)  # (another thread may have done it: no KeyError)
        transport = self._transport
        if transport is None:
            if self._ssl_context is None and self.config.base_url.startswith("https"):
                self._ssl_context = httpx.create_ssl_context()
            transport = httpx.AsyncHTTPTransport(socket_options=NO_DELAY, verify=self._ssl_context or True)
        http = httpx.AsyncClient(timeout=self.config.timeout, transport=transport)
        own = _LoopClient(http, transport, weakref.ref(loop) if loop is not None else _no_loop)
        if loop is not None and self._transport is None:  # (a transport of the user's is the user's to close)
            clients = self._clients

            def forget() -> None:
                if clients.get(key) is own:
                    clients.pop(key, None)

            own.closer = _closed_with_the_loop(http, forget)
        self._clients[key] = own
        return own

    async def send(self, request: httpx.Request) -> httpx.Response:
        """As :meth:`SyncHTTP.send`: the user's ``http_client`` whole, else straight to the transport."""
        if self._user_client is not None:
            return await self._user_client.send(request)
        return await _aexchange(self._own().transport, request, self._timeouts)

    def forget_connections(self) -> None:
        """After fork(): the parent's loops and connections are not the child's. (Kept, not dropped: a dropped
        closer would ask a loop the child does not run to close what is not the child's.)"""
        if self._plain is not None:
            self._plain.forget()
        _FORGOTTEN.extend(self._clients.values())
        self._clients = {}

    async def aclose(self) -> None:
        """Close what we made; a transport or client the user passed stays the user's to close.

        The running loop's client is closed here; another loop's, as that loop shuts down (a client cannot be
        closed from a loop that does not own its connections)."""
        if self._plain is not None:
            self._plain.close()
        loop = _running_loop()
        own = self._clients.pop(None if loop is None else id(loop), None)
        if own is not None and own.loop() is loop and self._transport is None:
            await own.http.aclose()
            if own.closer is not None:
                await own.closer.aclose()  # done with: nothing is left for the garbage collector to finalize

    async def post(
        self,
        path: str,
        body: Any = None,
        *,
        content: Optional[bytes] = None,
        idempotency_key: Optional[str] = None,
        max_retries: Optional[int] = None,
        method: str = "POST",
    ) -> httpx.Response:
        config = self.config
        retries = config.max_retries if max_retries is None else max_retries
        request = _request(config, self._user_client, method, path, body, content, idempotency_key)
        return await self._retried(request, retries)

    async def _retried(
        self,
        request: httpx.Request,
        retries: int,
        response: Optional[httpx.Response] = None,
        failure: Optional[httpx.TransportError] = None,
    ) -> httpx.Response:
        """As :meth:`SyncHTTP._retried`."""
        config = self.config
        attempt = 0
        while True:
            error: AgentLedgerError
            if response is None and failure is None:
                try:
                    response = await self.send(request)
                except httpx.TransportError as exc:
                    failure = exc
            if failure is not None:
                error = config._error_for_exception(failure, request)
            else:
                assert response is not None
                if response.is_success:
                    return response
                error = config._error_for_response(response)
            delay = config._retry_delay(error, attempt, retries)
            if delay is None:
                raise error
            config._log_retry(request, error, delay, attempt, retries)
            await _async_sleep(delay)
            attempt += 1
            response = failure = None

    async def post_for_json(
        self, path: str, body: Any, *, idempotency_key: str, max_retries: Optional[int] = None
    ) -> Any:
        """As :meth:`SyncHTTP.post_for_json`, on the running event loop (:class:`AsyncPlainExchange`)."""
        plain = self._plain
        if plain is None or plain.full() or _async_sending_is_faked() or not _on_asyncio():
            response = await self.post(path, body, idempotency_key=idempotency_key, max_retries=max_retries)
            return self.config._parse_success(response)
        config = self.config
        retries = config.max_retries if max_retries is None else max_retries
        url, data, content = _request_bytes(config, path, body, idempotency_key)
        try:
            answer = await plain.exchange(url, data, self._timeouts)
        except NotImplementedError:  # a loop that cannot watch a socket: httpx's way from now on (the same key)
            self._plain = None
            response = await self.post(path, body, idempotency_key=idempotency_key, max_retries=max_retries)
            return self.config._parse_success(response)
        except httpx.TransportError as exc:
            request = _request(config, None, "POST", path, body, content, idempotency_key)
            return config._parse_success(await self._retried(request, retries, failure=exc))
        parsed, other = _answered(config, path, body, content, idempotency_key, answer)
        if other is None:
            return parsed
        return config._parse_success(await self._retried(other.request, retries, response=other))


class SyncLedgerIO:
    """:class:`LedgerIO` over a :class:`SyncHTTP`, with its own retry budget."""

    def __init__(self, http: SyncHTTP, max_retries: int) -> None:
        self.http = http
        self.max_retries = max_retries

    def start_session(self, body: dict[str, Any], idempotency_key: str) -> Started:
        response = self.http.post("/v1/sessions", body, idempotency_key=idempotency_key, max_retries=self.max_retries)
        return started(self.http.config, response)

    def reserve(self, body: dict[str, Any], idempotency_key: str) -> Any:
        return self.http.post_for_json(
            "/v1/reservations", body, idempotency_key=idempotency_key, max_retries=self.max_retries
        )

    def send_events(
        self,
        session_id: str,
        encoded_events: list[str],
        idempotency_key: str,
        on_sent: Optional[Callable[[], None]] = None,
    ) -> Any:
        """The ledger's answer (parsed JSON): the local ledger prices each LLM call in it (``priced``)."""
        content = events_body(session_id, encoded_events)
        response = self.http.post(
            "/v1/events",
            content=content,
            idempotency_key=idempotency_key,
            max_retries=self.max_retries,
            on_sent=on_sent,
        )
        return self.http.config._parse_success(response)

    def end_session(self, session_id: str, body: dict[str, Any], idempotency_key: str) -> None:
        path = f"/v1/sessions/{session_id}/end"
        self.http.post(path, body, idempotency_key=idempotency_key, max_retries=self.max_retries)


def _responds(loop: asyncio.AbstractEventLoop, timeout: float) -> bool:
    """True if ``loop`` runs a callback within ``timeout`` seconds: it is not blocked."""
    ping = threading.Event()
    try:
        loop.call_soon_threadsafe(ping.set)
    except RuntimeError:  # closed
        return False
    return ping.wait(timeout)


def _serving(loop: asyncio.AbstractEventLoop) -> bool:
    """True while ``loop`` runs user code: not closed, and not yet shutting down (``asyncio.run``'s last steps)."""
    return loop.is_running() and not loop.is_closed() and not getattr(loop, "_asyncgens_shutdown_called", False)


class LoopBridge:
    """:class:`LedgerIO` for the sender thread over an :class:`AsyncHTTP` with the user's transport or client.

    Each call runs as a coroutine on the event loop the async client was last
    used on, so connections and the user's async transport stay on their loop.
    (Without a transport or client of the user's, the async client's sender
    thread uses a :class:`SyncLedgerIO` of its own, and never this loop.)
    When that loop is gone (``asyncio.run`` returned, interpreter exit), the
    call runs on a short-lived loop of its own, still through the user's
    transport or ``http_client`` (which are never closed by it).
    """

    # Longest the sender waits for the user's loop to run one call: a loop blocked
    # by a synchronous flush() must not hang the sender forever.
    LOOP_WAIT = 120.0
    # How long a call waits for the loop to pick it up before it is made on a loop of its own.
    LOOP_START_WAIT = 0.5

    def __init__(self, http: AsyncHTTP, max_retries: int, *, loop_of: Optional[LoopBridge] = None) -> None:
        self.http = http
        self.max_retries = max_retries
        self._loop_of = loop_of  # another bridge of the same client: one loop for both
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._blocked_until = 0.0

    @property
    def loop(self) -> Optional[asyncio.AbstractEventLoop]:
        return self._loop_of.loop if self._loop_of is not None else self._loop

    def note_loop(self) -> None:
        """Remember the running loop (called by the async client's coroutines)."""
        import asyncio

        if self._loop_of is not None:
            self._loop_of.note_loop()
        else:
            self._loop = asyncio.get_running_loop()

    def forget_loop(self) -> None:
        self._loop = None

    def _run(self, call: Callable[[AsyncHTTP], Coroutine[Any, Any, Any]]) -> Any:
        import asyncio

        loop = self.loop
        if loop is not None and _serving(loop) and time.monotonic() >= self._blocked_until:
            try:
                running_here = asyncio.get_running_loop() is loop
            except RuntimeError:
                running_here = False
            if not running_here:
                done, result = self._on_the_users_loop(loop, call)
                if done:
                    return result
        # The user's loop is gone or blocked: a loop of our own for this call, and an httpx client bound to it.
        http = AsyncHTTP(
            self.http.config,
            transport=self.http._transport,
            http_client=self.http._user_client,
            ssl_context=self.http._ssl_context,
        )
        private = asyncio.new_event_loop()
        try:
            return private.run_until_complete(call(http))
        finally:
            try:
                private.run_until_complete(http.aclose())
            finally:
                private.close()

    def _on_the_users_loop(
        self, loop: asyncio.AbstractEventLoop, call: Callable[[AsyncHTTP], Coroutine[Any, Any, Any]]
    ) -> tuple[bool, Any]:
        """Run the call on the user's loop: (True, its result), or (False, None) if the loop stopped or is blocked.

        A call given up on a blocked loop is cancelled there and made again on a
        loop of our own, with the same idempotency key: the ledger records it once.
        """
        import asyncio
        import concurrent.futures

        future = asyncio.run_coroutine_threadsafe(call(self.http), loop)
        deadline = time.monotonic() + self.LOOP_WAIT
        while True:
            try:
                return True, future.result(0.05)
            except concurrent.futures.TimeoutError:
                if time.monotonic() >= deadline:
                    future.cancel()
                    raise
                if _serving(loop) and _responds(loop, self.LOOP_START_WAIT):
                    continue
                future.cancel()  # stopped, or blocked (a synchronous flush() on it, CPU-bound work)
                if _serving(loop):
                    self._blocked_until = time.monotonic() + 1.0
                return False, None
            except concurrent.futures.CancelledError:
                return False, None  # not by us: the loop is shutting down (asyncio.run cancels what is left)
            except Exception:
                if _serving(loop):
                    raise
                return False, None  # it failed because the loop was shutting down under it

    def _post(
        self, http: AsyncHTTP, path: str, body: Any = None, content: Optional[bytes] = None, key: str = ""
    ) -> Any:
        return http.post(path, body, content=content, idempotency_key=key, max_retries=self.max_retries)

    async def _start_on(self, http: AsyncHTTP, body: dict[str, Any], idempotency_key: str) -> Started:
        response = await self._post(http, "/v1/sessions", body, key=idempotency_key)
        return started(http.config, response)

    async def _send_on(self, http: AsyncHTTP, content: bytes, idempotency_key: str) -> Any:
        response = await self._post(http, "/v1/events", content=content, key=idempotency_key)
        return http.config._parse_success(response)

    async def _reserve_on(self, http: AsyncHTTP, body: dict[str, Any], idempotency_key: str) -> Any:
        return await http.post_for_json(
            "/v1/reservations", body, idempotency_key=idempotency_key, max_retries=self.max_retries
        )

    # -- LedgerIO, for the sender thread and synchronous callers ---------------

    def start_session(self, body: dict[str, Any], idempotency_key: str) -> Started:
        result: Started = self._run(lambda http: self._start_on(http, body, idempotency_key))
        return result

    def send_events(
        self,
        session_id: str,
        encoded_events: list[str],
        idempotency_key: str,
        on_sent: Optional[Callable[[], None]] = None,
    ) -> Any:
        content = events_body(session_id, encoded_events)  # on_sent: not told (the call runs on another loop)
        return self._run(lambda http: self._send_on(http, content, idempotency_key))

    def end_session(self, session_id: str, body: dict[str, Any], idempotency_key: str) -> None:
        path = f"/v1/sessions/{session_id}/end"
        self._run(lambda http: self._post(http, path, body, key=idempotency_key))

    def reserve(self, body: dict[str, Any], idempotency_key: str) -> Any:
        return self._run(lambda http: self._reserve_on(http, body, idempotency_key))

    # -- the same calls for async callers already on the loop ---------------

    async def astart_session(self, body: dict[str, Any], idempotency_key: str) -> Started:
        return await self._start_on(self.http, body, idempotency_key)

    async def asend_events(self, session_id: str, encoded_events: list[str], idempotency_key: str) -> Any:
        return await self._send_on(self.http, events_body(session_id, encoded_events), idempotency_key)

    async def aend_session(self, session_id: str, body: dict[str, Any], idempotency_key: str) -> None:
        await self._post(self.http, f"/v1/sessions/{session_id}/end", body, key=idempotency_key)

    async def areserve(self, body: dict[str, Any], idempotency_key: str) -> Any:
        return await self._reserve_on(self.http, body, idempotency_key)
