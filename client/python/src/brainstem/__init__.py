"""brainstem: the Python client for brainstemd.

    import brainstem

    bs = brainstem.connect()                       # BRAINSTEM_* env vars, else ./.brainstem-dev
    print(bs.admin.who_am_i().principal)
    reply = bs.policy.check(action="web.read", resource="https://docs.rs", context={"hour": 10})

One attribute per ``brainstem.v1`` service and one method per RPC, both in snake_case; requests are
given as a message or as field values. Failures raise :mod:`brainstem.errors` exceptions. Calls have a
deadline (``timeout=``, default from :func:`connect`), are retried with backoff and jitter on
UNAVAILABLE / RESOURCE_EXHAUSTED when safe (see :mod:`brainstem.resilience`), and go through the
endpoint's circuit breaker. The generated stubs are importable too: ``from brainstem.v1 import
admin_pb2``.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

import grpc

from . import errors, resilience
from ._client import AsyncClient, Client, IDEMPOTENCY_KEY, Service, new_idempotency_key, snake_case
from ._settings import PemSource, resolve
from .resilience import BreakerState, CircuitBreaker, RetryPolicy, NO_RETRY

__all__ = [
    "connect",
    "connect_async",
    "Client",
    "AsyncClient",
    "Service",
    "RetryPolicy",
    "NO_RETRY",
    "CircuitBreaker",
    "BreakerState",
    "IDEMPOTENCY_KEY",
    "new_idempotency_key",
    "snake_case",
    "errors",
    "resilience",
]

__version__ = "0.1.0"

_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def _prepare(endpoint, ca, cert, key, state_dir, server_name, timeout, breaker):  # noqa: PLR0913
    settings = resolve(endpoint, ca=ca, cert=cert, key=key, state_dir=state_dir, server_name=server_name, timeout=timeout)
    creds = grpc.ssl_channel_credentials(root_certificates=settings.ca, private_key=settings.key, certificate_chain=settings.cert)
    options = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        # Retries are ours (RetryInfo-aware, idempotency-aware); gRPC core's transparent retries stay on.
        ("grpc.enable_retries", 1),
    ]
    if settings.server_name:
        options.append(("grpc.ssl_target_name_override", settings.server_name))
    if breaker is None:
        breaker = resilience.breaker_for(settings.endpoint, CircuitBreaker)
    elif breaker is False:
        breaker = CircuitBreaker(failure_threshold=1 << 62)
    return settings, creds, options, breaker


def connect(
    endpoint: Optional[str] = None,
    *,
    ca: Optional[PemSource] = None,
    cert: Optional[PemSource] = None,
    key: Optional[PemSource] = None,
    state_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
    server_name: Optional[str] = None,
    timeout: Optional[float] = None,
    token: Optional[str] = None,
    retry: RetryPolicy = RetryPolicy(),
    breaker: Union[CircuitBreaker, None, bool] = None,
    on_retry: Optional[Callable[[str, int, float, errors.BrainstemError], None]] = None,
    auto_idempotency_keys: bool = False,
) -> Client:
    """Connects to brainstemd over mutual TLS and returns a :class:`Client`.

    Each of ``endpoint``, ``ca``, ``cert``, ``key``, ``server_name`` and ``timeout`` comes from the
    argument, else ``BRAINSTEM_ENDPOINT`` / ``BRAINSTEM_CA`` / ``BRAINSTEM_CERT`` / ``BRAINSTEM_KEY`` /
    ``BRAINSTEM_SERVER_NAME`` / ``BRAINSTEM_TIMEOUT_SECONDS``, else the dev state directory
    (``state_dir`` or ``BRAINSTEM_STATE_DIR``, default ``.brainstem-dev``: its ``pki/ca.pem`` and the
    admin identity ``pki/admin.pem`` + ``pki/admin.key``). ``ca``/``cert``/``key`` are paths or PEM
    bytes. ``timeout`` is every call's default deadline in seconds (10). ``token`` is a capability token
    sent with every call. ``breaker``: ``None`` shares the endpoint's process-wide breaker, a
    :class:`CircuitBreaker` uses that one, ``False`` disables it. ``on_retry(method, attempt, delay,
    error)`` is called before each retry's wait. ``auto_idempotency_keys=True`` gives every call of a
    mutating method a fresh idempotency key, so those calls are retried too (each kept reply costs the
    daemon a durable write).

    The channel connects lazily: an unreachable daemon shows on the first call (``Unavailable``).
    """
    settings, creds, options, breaker = _prepare(endpoint, ca, cert, key, state_dir, server_name, timeout, breaker)
    channel = grpc.secure_channel(settings.endpoint, creds, options=options)
    return Client(settings, channel, retry=retry, breaker=breaker, token=token, on_retry=on_retry,
                  auto_idempotency_keys=auto_idempotency_keys)


def connect_async(
    endpoint: Optional[str] = None,
    *,
    ca: Optional[PemSource] = None,
    cert: Optional[PemSource] = None,
    key: Optional[PemSource] = None,
    state_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
    server_name: Optional[str] = None,
    timeout: Optional[float] = None,
    token: Optional[str] = None,
    retry: RetryPolicy = RetryPolicy(),
    breaker: Union[CircuitBreaker, None, bool] = None,
    on_retry: Optional[Callable[[str, int, float, errors.BrainstemError], None]] = None,
    auto_idempotency_keys: bool = False,
) -> AsyncClient:
    """Like :func:`connect`, for asyncio (``grpc.aio``): ``await bs.admin.ping()``. Call it inside the
    event loop that will use the client."""
    settings, creds, options, breaker = _prepare(endpoint, ca, cert, key, state_dir, server_name, timeout, breaker)
    channel = grpc.aio.secure_channel(settings.endpoint, creds, options=options)
    return AsyncClient(settings, channel, retry=retry, breaker=breaker, token=token, on_retry=on_retry,
                       auto_idempotency_keys=auto_idempotency_keys)
