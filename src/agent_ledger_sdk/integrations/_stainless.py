"""Instrumenting a Stainless-generated client (``openai``, ``anthropic``) at its one request method.

Every API method of these clients (``create``, ``parse``, the ``.stream()``
helpers, raw responses) goes through ``SyncAPIClient.request`` /
``AsyncAPIClient.request`` with the endpoint's path and JSON body. Wrapping
that one method, on the class, covers every client of the package, made before
or after, sync and async, with nothing per call site; a client instrumented on
its own is told apart by its HTTP client, which its ``with_options()`` copies
share. The client's retries are counted where it computes its back-off
(``_calculate_retry_timeout``, once per retry, in every 1.x-3.x version).

What an endpoint's request and response mean is the business of an
:class:`Endpoint` (``integrations/openai.py``, ``integrations/anthropic.py``).
A stream is handed back inside a proxy that passes the user exactly the items
they would have had (an :class:`Endpoint` may hide one it asked for, like
OpenAI's usage-only chunk) and records the call once, when the stream ends,
fails, is closed or is dropped.
"""

from __future__ import annotations

import contextvars
import importlib
import json
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Callable, Optional

import wrapt

from .._exceptions import BudgetGuardrailError
from .._stats import internal_error
from ._calls import ProviderCall, Resolver, globally_instrumented

# The provider call whose request is in flight in this context: retries are counted on it,
# and a request the integration makes inside another (none today) is not recorded twice.
_active: contextvars.ContextVar[Optional[ProviderCall]] = contextvars.ContextVar(
    "agent_ledger_active_call", default=None
)


class Plan:
    """What an endpoint makes of a request: the call to begin, and the request's options to send instead."""

    __slots__ = ("attributes", "model", "options", "prompt")

    def __init__(self, model: str, prompt: Any, attributes: dict[str, Any], options: Any = None) -> None:
        self.model = model
        self.prompt = prompt
        self.attributes = attributes
        self.options = options  # replacement request options (e.g. asking for stream usage), or None


class StreamReader:
    """Reads one stream's items as they pass; records the outcome on its call at the end."""

    # A text that every server-sent event the reader hides holds (None: it hides none): events without it
    # pass with no call to hidden_event().
    hides: Optional[str] = None
    # Whether the reader would rather take the text of every server-sent event and read it in end(), off the
    # agent's thread, than read each item the client made. ``raw``: that text, once _read_events could hand
    # it over (None: it reads the items).
    reads_raw = False
    raw: Optional[list[str]] = None

    def __init__(self, call: ProviderCall) -> None:
        self.call = call

    def item(self, item: Any) -> bool:
        """Observe one item; False hides it from the user (an item the integration asked for)."""
        return True

    def held(self) -> int:
        """The bytes this reader keeps until end() runs (the events' text)."""
        return 0 if self.raw is None else sum(map(len, self.raw))

    def raw_events(self) -> Iterator[dict[str, Any]]:
        """The JSON objects of the events kept (``raw``), in order; text that is not one (``[DONE]``) skipped."""
        for data in self.raw or ():
            try:
                event = json.loads(data)
            except ValueError:
                continue
            if type(event) is dict:
                yield event

    def hidden_event(self, event: Any) -> bool:
        """Whether ``event``, a server-sent event of the stream before the client parses it, is one the
        integration asked for and reads itself: the client never parses it into an item (see :func:`_read_events`)."""
        return False

    def end(self) -> None:
        """Record what arrived on the call (its usage, text, finish reason)."""


class Endpoint:
    """One API shape: how its request begins a call, and how its response or stream is read."""

    def plan(self, options: Any, body: dict[str, Any], stream: bool) -> Optional[Plan]:
        raise NotImplementedError

    def read(self, call: ProviderCall, result: Any) -> None:
        raise NotImplementedError

    def reader(self, call: ProviderCall, plan: Plan) -> StreamReader:
        return StreamReader(call)


Router = Callable[[str, str], Optional[Endpoint]]  # (method, path) -> endpoint or None


def given(value: Any) -> bool:
    """A request argument the user gave: not None, nor the SDK's ``NOT_GIVEN`` / ``omit`` markers."""
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit")


def with_body(options: Any, body: dict[str, Any]) -> Any:
    """The request's options with another JSON body. The options object is the client's own, made for
    this one call (the user's arguments were already copied into its body), so it is changed in place:
    a copy of a pydantic model would cost more than the rest of the instrumentation."""
    options.json_data = body
    return options


class StainlessIntegration:
    """The instrumentation of one package's clients: what is instrumented, and the patches that do it."""

    def __init__(
        self, package: str, provider: str, router: Router, helper_streams: tuple[tuple[str, str, bool], ...] = ()
    ) -> None:
        self.package = package
        self.helper_streams = helper_streams  # (module, class, is_async) of the .stream() helpers' streams
        self.provider = provider
        self.router = router
        self._global: Optional[Resolver] = None
        # Clients instrumented (a resolver) or excluded (False) one by one, by their HTTP client.
        self._clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._patches: list[tuple[Any, str, Any]] = []
        self._lock = threading.Lock()

    # -- instrument / uninstrument -------------------------------------------

    def _module(self) -> Any:
        try:
            return importlib.import_module(f"{self.package}._base_client")
        except ImportError:
            extra = self.package.replace("_", "-")
            raise ImportError(
                f"instrument_{self.package}() needs the {self.package!r} package: "
                f'pip install "agent-ledger-sdk[{extra}]"'
            ) from None

    def instrument(self, resolve: Resolver, client: Any = None) -> None:
        base = self._module()
        with self._lock:
            if client is None:
                self._global = resolve
                globally_instrumented.add(self.package)
            else:
                self._clients[self._http_client_of(base, client)] = resolve
            if not self._patches:
                self._patch(base)

    def uninstrument(self, client: Any = None) -> None:
        base = self._module()
        with self._lock:
            if client is None:
                self._global = None
                self._clients.clear()
                globally_instrumented.discard(self.package)
            else:
                key = self._http_client_of(base, client)
                if self._global is not None:
                    self._clients[key] = False  # every client but this one
                else:
                    self._clients.pop(key, None)
            if self._global is None and not any(self._clients.values()):
                self._unpatch()

    def _http_client_of(self, base: Any, client: Any) -> Any:
        if not isinstance(client, (base.SyncAPIClient, base.AsyncAPIClient)):
            raise TypeError(
                f"instrument_{self.package}(client) takes a {self.package} client "
                f"(e.g. {self.package}.{'OpenAI' if self.package == 'openai' else 'Anthropic'}()), "
                f"got {type(client).__name__}; call it with no argument to instrument every client"
            )
        return client._client

    def resolver_for(self, client: Any) -> Optional[Resolver]:
        if not self._clients:  # the usual case: every client or none
            return self._global
        try:
            own = self._clients.get(client._client)
        except TypeError:  # an HTTP client that cannot be weakly referenced: not instrumented alone
            own = None
        if own is not None:
            return own or None
        return self._global

    def _patch(self, base: Any) -> None:
        integration = self

        def sync_request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return integration._sync_request(wrapped, instance, args, kwargs)

        async def async_request(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return await integration._async_request(wrapped, instance, args, kwargs)

        def count_retry(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            call = _active.get()
            if call is not None:
                call.retries += 1
            return wrapped(*args, **kwargs)

        def keep_response(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            call = _active.get()
            if call is not None:
                call.raw = kwargs.get("response")
            return wrapped(*args, **kwargs)

        targets: list[tuple[Any, str, Any]] = [
            (base.SyncAPIClient, "request", sync_request),
            (base.AsyncAPIClient, "request", async_request),
            (base.BaseClient, "_calculate_retry_timeout", count_retry),
            # Where the client turns the HTTP response into its result: the response is kept on the call.
            (base.SyncAPIClient, "_process_response", keep_response),
            (base.AsyncAPIClient, "_process_response", keep_response),
        ]
        for module_name, class_name, is_async in self.helper_streams:
            try:
                helper = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError):
                continue  # a version without this helper
            targets.append((helper, "close", _aclose_helper_stream if is_async else _close_helper_stream))
        for owner, name, wrapper in targets:
            original = owner.__dict__.get(name)
            if original is None:
                continue  # a version without it: its retries are not counted
            setattr(owner, name, wrapt.FunctionWrapper(original, wrapper))
            self._patches.append((owner, name, original))

    def _unpatch(self) -> None:
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches.clear()

    # -- one request ------------------------------------------------------------

    def _prepare(
        self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Optional[tuple[Resolver, Endpoint, Plan, tuple[Any, ...], dict[str, Any], tuple[Any, Any]]]:
        """The call to record, the request to send for it and the options' body as the user made it
        (see :func:`_as_made`); or None to pass the request through untouched."""
        if _active.get() is not None:
            return None
        resolve = self.resolver_for(instance)
        if resolve is None:
            return None
        try:
            if not resolve().enabled:
                return None  # enabled=False: a pass-through, also under a test capture
            options = args[1] if len(args) > 1 else kwargs["options"]
            made = (options, options.json_data)
            endpoint = self.router(str(options.method).lower(), str(options.url))
            if endpoint is None:
                return None
            body = options.json_data if isinstance(options.json_data, dict) else {}
            plan = endpoint.plan(options, body, bool(kwargs.get("stream")))
            if plan is None:
                return None
            if plan.options is not None:
                if len(args) > 1:
                    args = (args[0], plan.options, *args[2:])
                else:
                    kwargs = {**kwargs, "options": plan.options}
        except Exception as exc:  # an unexpected request shape: record nothing, send it as it was
            internal_error(f"{self.package} request", exc)
            return None
        return resolve, endpoint, plan, args, kwargs, made

    def _sync_request(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        prepared = self._prepare(instance, args, kwargs)
        if prepared is None:
            return wrapped(*args, **kwargs)
        resolve, endpoint, plan, sent_args, sent_kwargs, made = prepared
        call = _begin(resolve, self.provider, plan)  # a budget refusal raises here: nothing was sent
        if call is None:
            _as_made(made)
            return wrapped(*args, **kwargs)  # nothing records: the request as the user made it
        token = _active.set(call)
        try:
            result = wrapped(*sent_args, **sent_kwargs)
        except BaseException as exc:
            call.finish_quietly(exc)
            raise
        finally:
            _active.reset(token)
        return self._outcome(call, endpoint, plan, result, kwargs, SyncStream)

    async def _async_request(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        prepared = self._prepare(instance, args, kwargs)
        if prepared is None:
            return await wrapped(*args, **kwargs)
        resolve, endpoint, plan, sent_args, sent_kwargs, made = prepared
        call = await _abegin(resolve, self.provider, plan)
        if call is None:
            _as_made(made)
            return await wrapped(*args, **kwargs)  # nothing records: the request as the user made it
        token = _active.set(call)
        try:
            result = await wrapped(*sent_args, **sent_kwargs)
        except BaseException as exc:
            call.finish_quietly(exc)
            raise
        finally:
            _active.reset(token)
        return self._outcome(call, endpoint, plan, result, kwargs, AsyncStream)

    def _outcome(
        self, call: ProviderCall, endpoint: Endpoint, plan: Plan, result: Any, kwargs: dict[str, Any], proxy: Any
    ) -> Any:
        try:
            if kwargs.get("stream") and type(result).__name__ in ("Stream", "AsyncStream"):
                reader = endpoint.reader(call, plan)
                _read_events(result, reader)
                return proxy(result, call, reader)
            body = _body_of(call.raw)
            if body is not None:
                # The bytes the provider sent are read off the agent's thread: exact, and the
                # user's response object is theirs to change.
                complete: Optional[Callable[[], Any]] = _reader_of_body(endpoint, call, body, result)
            else:
                parsed = _parsed(result)
                if parsed is not None:
                    endpoint.read(call, parsed)
                complete = None
        except Exception as exc:
            internal_error(f"{self.package} response", exc)
            complete = None
        call.finish_quietly(complete=complete)  # a ledger's refusal latches and stops the next call, not this one
        return result


def _as_made(made: tuple[Any, Any]) -> None:
    """Undo what a plan changed in the request options (in place, see :func:`with_body`): nothing records,
    so nothing is asked for that the user did not ask (an unhidden usage chunk would reach their loop)."""
    options, json_data = made
    if options.json_data is not json_data:
        options.json_data = json_data


def _begin(resolve: Resolver, provider: str, plan: Plan) -> Optional[ProviderCall]:
    try:
        # The prompt is the client's request body, built for this call: a copy already, and never changed.
        return ProviderCall.begin(resolve, provider, plan.model, plan.prompt, copy_prompt=False, **plan.attributes)
    except BudgetGuardrailError:
        raise
    except Exception as exc:
        internal_error("llm call begin", exc)
        return None


async def _abegin(resolve: Resolver, provider: str, plan: Plan) -> Optional[ProviderCall]:
    try:
        return await ProviderCall.abegin(
            resolve, provider, plan.model, plan.prompt, copy_prompt=False, **plan.attributes
        )
    except BudgetGuardrailError:
        raise
    except Exception as exc:
        internal_error("llm call begin", exc)
        return None


def _body_of(response: Any) -> Optional[bytes]:
    """The body of the provider's HTTP response, when it was read whole (not a streamed one)."""
    if response is None:
        return None
    try:
        content = response.content
    except Exception:  # streamed, not read: nothing to hand over
        return None
    return content if isinstance(content, bytes) and content else None


def _reader_of_body(endpoint: Endpoint, call: ProviderCall, body: bytes, result: Any) -> Callable[[], Any]:
    def read() -> None:
        try:
            answer = json.loads(body)
        except ValueError:  # not JSON (a proxy's page?): the response object says what it can
            answer = _parsed(result)
        if answer is not None:
            endpoint.read(call, answer)

    return read


def _parsed(result: Any) -> Any:
    """The response object of a call; a raw response (``with_raw_response``) is parsed, which it caches."""
    kind = type(result).__name__  # by name: hasattr() on a pydantic model that lacks it costs microseconds
    if kind == "LegacyAPIResponse":
        parsed = result.parse()
        return None if type(parsed).__name__ in ("Stream", "AsyncStream") else parsed
    if kind in ("APIResponse", "AsyncAPIResponse"):
        return None  # with_streaming_response: the body is the user's to read; usage stays missing
    return result


# -- streams ------------------------------------------------------------------


def _read_events(stream: Any, reader: StreamReader) -> None:
    """Hand ``reader`` the stream's server-sent events before the client parses them: their text, when it
    reads that (``reads_raw``), and the events it asked for (``hides``), which the client then never parses
    (a chunk the client parses costs about 0.1 ms, a pydantic model, and is one the user would not have had).

    The client's ``Stream`` reads its events from its own decoder (``self._decoder``, made for it, in every
    1.x-3.x version), which is wrapped here. The wrapper holds no reference to the stream: a stream read to
    its end is freed at once, as it would be uninstrumented. Without a decoder, the reader reads and hides
    the parsed items instead (``StreamReader.item``)."""
    if reader.hides is None and not reader.reads_raw:
        return
    decoder = getattr(stream, "_decoder", None)
    if decoder is None or not hasattr(decoder, "iter_bytes"):
        return
    if reader.reads_raw:
        reader.raw = []
    stream._decoder = _ReadingDecoder(decoder, reader)


class _ReadingDecoder:
    """A stream's server-sent event decoder, whose events its reader sees first."""

    __slots__ = ("_decoder", "_reader")

    def __init__(self, decoder: Any, reader: StreamReader) -> None:
        self._decoder = decoder
        self._reader = reader

    def iter_bytes(self, iterator: Any) -> Any:
        reader = self._reader
        hides, hidden, raw = reader.hides, reader.hidden_event, reader.raw
        for event in self._decoder.iter_bytes(iterator):
            data = event.data
            if hides is not None and hides in data and hidden(event):
                continue
            if raw is not None:
                raw.append(data)
            yield event

    async def aiter_bytes(self, iterator: Any) -> Any:
        reader = self._reader
        hides, hidden, raw = reader.hides, reader.hidden_event, reader.raw
        async for event in self._decoder.aiter_bytes(iterator):
            data = event.data
            if hides is not None and hides in data and hidden(event):
                continue
            if raw is not None:
                raw.append(data)
            yield event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoder, name)


def _relay(stream: Any, call: ProviderCall, reader: StreamReader) -> Any:
    """The stream's items as the user gets them. It holds no reference to its proxy: dropping the proxy
    finalizes it at once (no reference cycle waiting for the garbage collector)."""
    try:
        for item in stream:
            if reader.item(item):
                yield item
    except GeneratorExit:
        _abandoned(call, reader)
        raise
    except BaseException as exc:
        _ended(call, reader, exc)
        raise
    else:
        _ended(call, reader, None)


async def _arelay(stream: Any, call: ProviderCall, reader: StreamReader) -> Any:
    try:
        async for item in stream:
            if reader.item(item):
                yield item
    except GeneratorExit:
        _abandoned(call, reader)
        raise
    except BaseException as exc:
        _ended(call, reader, exc)
        raise
    else:
        _ended(call, reader, None)


class SyncStream(wrapt.ObjectProxy):  # type: ignore[type-arg,misc,unused-ignore]
    """A ``Stream`` as the user would have had it, that records its call once it is over:
    read to the end, failed, closed (by the user or a ``.stream()`` helper) or dropped."""

    def __init__(self, stream: Any, call: ProviderCall, reader: StreamReader) -> None:
        super().__init__(stream)
        self._self_call = call
        self._self_reader = reader
        self._self_read = False  # once iterated, the relay records the end, even if this proxy is dropped
        self._self_relay = _relay(stream, call, reader)

    def __iter__(self) -> Any:
        self._self_read = True
        return self._self_relay

    def __next__(self) -> Any:
        self._self_read = True
        return self._self_relay.__next__()

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_abandon()

    def _self_abandon(self) -> None:
        _abandoned(self._self_call, self._self_reader)

    def __del__(self) -> None:
        # Dropped unread. (Once iterated, the relay records the end: `for chunk in create(...)`
        # drops this proxy at once and goes on reading through the relay.)
        if not self._self_read:
            _abandoned(self._self_call, self._self_reader)


class AsyncStream(wrapt.ObjectProxy):  # type: ignore[type-arg,misc,unused-ignore]
    """An ``AsyncStream`` as the user would have had it, that records its call once it is over."""

    def __init__(self, stream: Any, call: ProviderCall, reader: StreamReader) -> None:
        super().__init__(stream)
        self._self_call = call
        self._self_reader = reader
        self._self_read = False
        self._self_relay = _arelay(stream, call, reader)

    def __aiter__(self) -> Any:
        self._self_read = True
        return self._self_relay

    async def __anext__(self) -> Any:
        self._self_read = True
        return await self._self_relay.__anext__()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_abandon()

    def _self_abandon(self) -> None:
        _abandoned(self._self_call, self._self_reader)

    def __del__(self) -> None:
        if not self._self_read:  # dropped unread; once iterated, the relay records the end
            _abandoned(self._self_call, self._self_reader)


def _close_helper_stream(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A ``.stream()`` helper's close() closes the HTTP response, not the stream it reads: finish that too."""
    try:
        return wrapped(*args, **kwargs)
    finally:
        raw = getattr(instance, "_raw_stream", None)
        if isinstance(raw, (SyncStream, AsyncStream)):
            raw._self_abandon()


async def _aclose_helper_stream(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return await wrapped(*args, **kwargs)
    finally:
        raw = getattr(instance, "_raw_stream", None)
        if isinstance(raw, (SyncStream, AsyncStream)):
            raw._self_abandon()


def _ended(call: ProviderCall, reader: StreamReader, error: Optional[BaseException]) -> None:
    if call.finished:
        return
    # What the stream's items said is put together off the agent's thread (the reader keeps its own
    # record of them). Output may have begun: usage, if it did not arrive, is owed.
    call.finish_quietly(error, billed=True, complete=reader.end, held=reader.held())


def _abandoned(call: ProviderCall, reader: StreamReader) -> None:
    if call.finished:
        return
    call.set(incomplete=True)  # closed or dropped before its end: recorded with what arrived
    _ended(call, reader, None)
