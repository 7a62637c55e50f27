"""The client: one attribute per brainstem.v1 service, one method per RPC, both in snake_case, built
from the generated descriptors (a service added to proto/ appears without a change here)."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import grpc
from google.protobuf import descriptor_pb2, message_factory

from . import errors
from ._settings import Settings
from .resilience import CircuitBreaker, RetryPolicy

IDEMPOTENCY_KEY = "idempotency-key"
_SAFE_LEVELS = frozenset({descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT})


def snake_case(name: str) -> str:
    """``WhoAmI`` → ``who_am_i``, ``GetStatus`` → ``get_status``, ``RotateKey`` → ``rotate_key``."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def new_idempotency_key() -> str:
    """A fresh random key for one logical operation (reuse it for every retry of that operation)."""
    return uuid.uuid4().hex


def service_descriptors() -> List[Any]:
    """Every service of every generated ``brainstem.v1`` module, in file then declaration order."""
    from . import v1

    found = []
    for info in sorted(pkgutil.iter_modules(v1.__path__), key=lambda m: m.name):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"{v1.__name__}.{info.name}")
        found.extend(module.DESCRIPTOR.services_by_name.values())
    return found


class _MethodInfo:
    def __init__(self, service, method):
        self.name = snake_case(method.name)
        self.path = f"/{service.full_name}/{method.name}"
        self.input = message_factory.GetMessageClass(method.input_type)
        self.output = message_factory.GetMessageClass(method.output_type)
        self.client_streaming = method.client_streaming
        self.server_streaming = method.server_streaming
        #: Declared safe to repeat in the proto (``option idempotency_level``).
        self.idempotent = method.GetOptions().idempotency_level in _SAFE_LEVELS
        self.doc = f"{self.path}({self.input.DESCRIPTOR.name}) -> {self.output.DESCRIPTOR.name}"

    def request(self, args: Sequence[Any], fields: Dict[str, Any]):
        """The request from a message, or from field values (positional in declaration order, or by name).
        A ``google.protobuf.Struct`` field takes a dict."""
        cls = self.input
        if len(args) == 1 and isinstance(args[0], cls) and not fields:
            return args[0]
        names = [f.name for f in cls.DESCRIPTOR.fields]
        if len(args) > len(names):
            raise TypeError(f"{self.name}() takes at most {len(names)} positional field values ({', '.join(names)})")
        fields = dict(fields)
        for name, value in zip(names, args):
            if name in fields:
                raise TypeError(f"{self.name}() got field {name!r} twice")
            fields[name] = value
        plain, structs = {}, {}
        for name, value in fields.items():
            fd = cls.DESCRIPTOR.fields_by_name.get(name)
            if fd is None:
                raise TypeError(f"{cls.DESCRIPTOR.full_name} has no field {name!r} (fields: {', '.join(names)})")
            if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Struct" and isinstance(value, Mapping):
                structs[name] = value
            else:
                plain[name] = value
        msg = cls(**plain)
        for name, value in structs.items():
            getattr(msg, name).update(value)
        return msg


class _Call:
    """What every attempt of one call shares."""

    __slots__ = ("metadata", "deadline", "retryable", "policy")

    def __init__(self, client, info: _MethodInfo, timeout, metadata, idempotency_key, retry, bearer):
        md: List[Tuple[str, str]] = list(client._metadata)
        if bearer is not None:
            md = [(k, v) for k, v in md if k != "authorization"] + [("authorization", f"Bearer {bearer}")]
        md.extend(metadata or ())
        unary = not info.client_streaming and not info.server_streaming
        if idempotency_key is None and client.auto_idempotency_keys and unary and not info.idempotent:
            if not any(k == IDEMPOTENCY_KEY for k, _ in md):
                idempotency_key = new_idempotency_key()
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not idempotency_key:
                raise TypeError("idempotency_key must be a non-empty str (see brainstem.new_idempotency_key())")
            md.append((IDEMPOTENCY_KEY, idempotency_key))
        self.metadata = md
        keyed = any(k == IDEMPOTENCY_KEY for k, _ in md)
        if timeout is None:
            timeout = None if info.server_streaming else client.timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.policy: RetryPolicy = retry if retry is not None else client.retry
        # Streams are never retried (part of the stream may already be consumed).
        self.retryable = (info.idempotent or keyed) and not info.client_streaming and not info.server_streaming

    def remaining(self, info) -> Optional[float]:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise errors.DeadlineExceeded("the call's deadline passed before it could be sent", method=info.path)
        return left

    def next_delay(self, err: errors.BrainstemError, attempt: int) -> Optional[float]:
        """The wait before the next attempt, or None when the error is final."""
        if not self.retryable or attempt >= self.policy.max_attempts or err.code not in self.policy.codes:
            return None
        retry_info = err.retry_delay if isinstance(err, errors.RateLimited) else None
        delay = self.policy.delay(attempt, retry_info)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return None
        return delay


def _open(breaker: CircuitBreaker, info: _MethodInfo, endpoint: str):
    if not breaker.allow():
        wait = breaker.retry_after()
        raise errors.CircuitOpen(
            f"circuit breaker for {endpoint} is open after repeated failures; next probe in {wait:.1f} s",
            method=info.path,
            retry_after=wait,
        )


class _Method:
    """A synchronous RPC: ``method(request_or_fields..., timeout=, metadata=, idempotency_key=, retry=, bearer=)``.

    The request is a message, or its field values (positional in declaration order, or by name). The
    call options are keyword-only: ``timeout`` (seconds, the whole call's deadline), ``metadata``
    (extra ``(key, value)`` pairs), ``idempotency_key``, ``retry`` (a :class:`RetryPolicy`) and
    ``bearer`` (a capability token for this call). A request field with one of these names is given
    by passing the request message."""

    def __init__(self, client: "Client", info: _MethodInfo, channel: grpc.Channel):
        self._client = client
        self.info = info
        ser, de = info.input.SerializeToString, info.output.FromString
        kind = (info.client_streaming, info.server_streaming)
        factory = {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }[kind]
        self._rpc = factory(info.path, request_serializer=ser, response_deserializer=de)
        self.__doc__ = info.doc
        self.__name__ = info.name

    def __repr__(self):
        return f"<brainstem method {self.info.path}>"

    def __call__(self, *args, timeout=None, metadata=None, idempotency_key=None, retry=None, bearer=None, **fields):
        info, client = self.info, self._client
        call = _Call(client, info, timeout, metadata, idempotency_key, retry, bearer)
        request = args[0] if info.client_streaming else info.request(args, fields)
        if info.server_streaming:
            _open(client.breaker, info, client.endpoint)
            return _SyncStream(self._rpc(request, timeout=call.remaining(info), metadata=call.metadata), client.breaker, info)
        attempt = 0
        while True:
            attempt += 1
            _open(client.breaker, info, client.endpoint)
            try:
                reply = self._rpc(request, timeout=call.remaining(info), metadata=call.metadata)
            except grpc.RpcError as rpc_err:
                client.breaker.record(rpc_err.code())
                err = errors.from_rpc_error(rpc_err, info.path)
                delay = call.next_delay(err, attempt)
                if delay is None:
                    raise err from None
                client._retried(info.path, attempt, delay, err)
                time.sleep(delay)
            except BaseException:
                client.breaker.release()
                raise
            else:
                client.breaker.record(None)
                return reply


class _SyncStream:
    """A server stream whose errors are brainstem exceptions and whose outcome feeds the breaker."""

    def __init__(self, rpc_iter, breaker: CircuitBreaker, info: _MethodInfo):
        self._it, self._breaker, self._info, self._recorded = rpc_iter, breaker, info, False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self):
        try:
            item = next(self._it)
        except grpc.RpcError as rpc_err:
            self._record(rpc_err.code())
            raise errors.from_rpc_error(rpc_err, self._info.path) from None
        except StopIteration:
            self._record(None)
            raise
        self._record(None)
        return item

    def _record(self, code):
        if not self._recorded:
            self._recorded = True
            self._breaker.record(code)

    def initial_metadata(self):
        """Blocks until the server answered the call's headers. Watch streams answer them once they
        are subscribed, so a change made after this returns is in the stream."""
        try:
            return self._it.initial_metadata()
        except grpc.RpcError as rpc_err:
            self._record(rpc_err.code())
            raise errors.from_rpc_error(rpc_err, self._info.path) from None

    def cancel(self):
        if not self._recorded:
            self._recorded = True
            self._breaker.release()
        self._it.cancel()


class _AsyncMethod(_Method):
    """An asyncio RPC: ``await method(...)``; a server stream is an async iterator."""

    def __call__(self, *args, timeout=None, metadata=None, idempotency_key=None, retry=None, bearer=None, **fields):
        info, client = self.info, self._client
        call = _Call(client, info, timeout, metadata, idempotency_key, retry, bearer)
        request = args[0] if info.client_streaming else info.request(args, fields)
        if info.server_streaming:
            _open(client.breaker, info, client.endpoint)
            return _AsyncStream(self._rpc(request, timeout=call.remaining(info), metadata=call.metadata), client.breaker, info)
        return self._unary(call, request)

    async def _unary(self, call: _Call, request):
        info, client = self.info, self._client
        attempt = 0
        while True:
            attempt += 1
            _open(client.breaker, info, client.endpoint)
            try:
                reply = await self._rpc(request, timeout=call.remaining(info), metadata=call.metadata)
            except grpc.RpcError as rpc_err:
                client.breaker.record(rpc_err.code())
                err = errors.from_rpc_error(rpc_err, info.path)
                delay = call.next_delay(err, attempt)
                if delay is None:
                    raise err from None
                client._retried(info.path, attempt, delay, err)
                await asyncio.sleep(delay)
            except BaseException:
                client.breaker.release()
                raise
            else:
                client.breaker.record(None)
                return reply


class _AsyncStream:
    def __init__(self, rpc_call, breaker: CircuitBreaker, info: _MethodInfo):
        self._call, self._breaker, self._info, self._recorded = rpc_call, breaker, info, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            item = await self._call.read()
        except grpc.RpcError as rpc_err:
            self._record(rpc_err.code())
            raise errors.from_rpc_error(rpc_err, self._info.path) from None
        if item is grpc.aio.EOF:
            self._record(None)
            raise StopAsyncIteration
        self._record(None)
        return item

    def _record(self, code):
        if not self._recorded:
            self._recorded = True
            self._breaker.record(code)

    async def initial_metadata(self):
        """Waits until the server answered the call's headers (see the sync stream's)."""
        try:
            return await self._call.initial_metadata()
        except grpc.RpcError as rpc_err:
            self._record(rpc_err.code())
            raise errors.from_rpc_error(rpc_err, self._info.path) from None

    def cancel(self):
        if not self._recorded:
            self._recorded = True
            self._breaker.release()
        self._call.cancel()


class Service:
    """One brainstem.v1 service: an attribute per RPC in snake_case."""

    def __init__(self, name: str, methods: Dict[str, _Method]):
        self._name = name
        self._methods = methods
        for attr, method in methods.items():
            setattr(self, attr, method)

    def __repr__(self):
        return f"<brainstem service {self._name}: {', '.join(self._methods)}>"

    def __dir__(self):
        return list(self._methods) + ["methods"]

    @property
    def methods(self) -> Dict[str, _Method]:
        return dict(self._methods)


class Client:
    """A connection to brainstemd with one attribute per ``brainstem.v1`` service (``admin``, ``policy``,
    ``tokens``, ``episodic``, …). Use :func:`brainstem.connect` to make one; close it (or use ``with``)."""

    _method_cls = _Method

    def __init__(
        self,
        settings: Settings,
        channel,
        *,
        retry: RetryPolicy,
        breaker: CircuitBreaker,
        token: Optional[str] = None,
        on_retry: Optional[Callable[[str, int, float, errors.BrainstemError], None]] = None,
        auto_idempotency_keys: bool = False,
    ):
        self.endpoint = settings.endpoint
        #: Give every call of a mutating method a fresh idempotency key (so it is retried safely).
        self.auto_idempotency_keys = auto_idempotency_keys
        self.timeout = settings.timeout
        self.retry = retry
        self.breaker = breaker
        self.channel = channel
        self.on_retry = on_retry
        #: Retries made by this client (each a wait then a new attempt).
        self.retries = 0
        self._metadata: List[Tuple[str, str]] = [("authorization", f"Bearer {token}")] if token else []
        self._services: Dict[str, Service] = {}
        for descriptor in service_descriptors():
            methods = {}
            for method in descriptor.methods:
                info = _MethodInfo(descriptor, method)
                methods[info.name] = self._method_cls(self, info, channel)
            attr = snake_case(descriptor.name)
            service = Service(descriptor.full_name, methods)
            self._services[attr] = service
            setattr(self, attr, service)

    @property
    def services(self) -> Dict[str, Service]:
        """Every service by attribute name."""
        return dict(self._services)

    def _retried(self, path: str, attempt: int, delay: float, err: errors.BrainstemError) -> None:
        self.retries += 1
        if self.on_retry is not None:
            self.on_retry(path, attempt, delay, err)

    def __repr__(self):
        return f"<brainstem.Client {self.endpoint}: {', '.join(self._services)}>"

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(Client):
    """The asyncio flavour (``grpc.aio``): every unary method is awaited; server streams are async
    iterators. Use :func:`brainstem.connect_async`; ``await client.close()`` or ``async with``."""

    _method_cls = _AsyncMethod

    def __repr__(self):
        return f"<brainstem.AsyncClient {self.endpoint}: {', '.join(self._services)}>"

    async def close(self) -> None:  # type: ignore[override]
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
