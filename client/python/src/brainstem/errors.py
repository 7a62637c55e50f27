"""One exception class per gRPC status code, carrying the google.rpc details brainstemd sends.

Every failed call raises a subclass of :class:`BrainstemError`. The daemon attaches standard details
(``grpc-status-details-bin``): ``INVALID_ARGUMENT`` carries a ``google.rpc.BadRequest`` whose field
violations are in :attr:`InvalidArgument.violations`; ``RESOURCE_EXHAUSTED`` (a rate limit) carries a
``google.rpc.RetryInfo`` whose delay is :attr:`RateLimited.retry_delay`; ``INTERNAL`` carries the error
id the daemon log repeats (:attr:`Internal.error_id`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Type

import grpc

__all__ = [
    "BrainstemError",
    "FieldViolation",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "RateLimited",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "CircuitOpen",
    "DataLoss",
    "Unauthenticated",
    "ConfigurationError",
    "from_rpc_error",
]

DETAILS_KEY = "grpc-status-details-bin"
ERROR_ID_KEY = "brainstem-error-id"


@dataclass(frozen=True)
class FieldViolation:
    """One entry of a ``google.rpc.BadRequest``: the request field and what is wrong with it."""

    field: str
    description: str


class BrainstemError(Exception):
    """A call that failed. ``code`` is the :class:`grpc.StatusCode`, ``message`` the daemon's text,
    ``method`` the full method path, ``metadata`` the trailing metadata as ``(key, value)`` pairs."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        metadata: Sequence[Tuple[str, object]] = (),
        details: Sequence[object] = (),
        code: Optional[grpc.StatusCode] = None,
    ):
        super().__init__(message)
        self.message = message
        self.method = method
        self.metadata = tuple(metadata)
        #: The unpacked google.rpc detail messages (BadRequest, RetryInfo, ErrorInfo, …).
        self.details = tuple(details)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        where = f" ({self.method})" if self.method else ""
        return f"{self.code.name}{where}: {self.message}"


class Cancelled(BrainstemError):
    code = grpc.StatusCode.CANCELLED


class Unknown(BrainstemError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(BrainstemError):
    """The request broke a rule; :attr:`violations` names each bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def violations(self) -> List[FieldViolation]:
        from google.rpc import error_details_pb2

        return [
            FieldViolation(v.field, v.description)
            for d in self.details
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]

    @property
    def fields(self) -> List[str]:
        """The names of the bad fields, in the daemon's order."""
        return [v.field for v in self.violations]


class DeadlineExceeded(BrainstemError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(BrainstemError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(BrainstemError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(BrainstemError):
    code = grpc.StatusCode.PERMISSION_DENIED


class RateLimited(BrainstemError):
    """RESOURCE_EXHAUSTED: a rate limit (or another quota) refused the call. :attr:`retry_delay` is the
    RetryInfo delay in seconds the daemon asked for, or ``None`` when it sent none."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def retry_delay(self) -> Optional[float]:
        from google.rpc import error_details_pb2

        for d in self.details:
            if isinstance(d, error_details_pb2.RetryInfo) and d.HasField("retry_delay"):
                return d.retry_delay.seconds + d.retry_delay.nanos / 1e9
        return None


#: The status's own name, for code that matches on codes rather than on causes.
ResourceExhausted = RateLimited


class FailedPrecondition(BrainstemError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(BrainstemError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(BrainstemError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(BrainstemError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(BrainstemError):
    """The daemon failed; :attr:`error_id` is the id its log repeats with the cause."""

    code = grpc.StatusCode.INTERNAL

    @property
    def error_id(self) -> Optional[str]:
        for key, value in self.metadata:
            if key == ERROR_ID_KEY:
                return value.decode() if isinstance(value, bytes) else str(value)
        return None


class Unavailable(BrainstemError):
    """The daemon could not be reached, or is stopping. :attr:`hint` names the likely cause of a
    connection failure."""

    code = grpc.StatusCode.UNAVAILABLE

    @property
    def hint(self) -> Optional[str]:
        text = self.message
        if "Connection refused" in text:
            return "nothing listens at the endpoint: is brainstemd running? (or set BRAINSTEM_ENDPOINT)"
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "the daemon's certificate is not signed by the CA given (a daemon from another state dir?)"
        if "handshake" in text.lower() or "CERTIFICATE_REQUIRED" in text:
            return "the TLS handshake failed: is the client certificate signed by the daemon's CA?"
        return None

    def __str__(self) -> str:
        hint = self.hint
        return super().__str__() + (f" [likely: {hint}]" if hint else "")


class CircuitOpen(Unavailable):
    """Not sent: the endpoint's circuit breaker is open after repeated failures (see
    :class:`brainstem.resilience.CircuitBreaker`). :attr:`retry_after` is the time in seconds until the
    breaker lets a probe call through."""

    def __init__(self, message: str, *, retry_after: float, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class DataLoss(BrainstemError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(BrainstemError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[grpc.StatusCode, Type[BrainstemError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        RateLimited,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def _unpack_details(metadata: Sequence[Tuple[str, object]]) -> List[object]:
    from google.rpc import error_details_pb2, status_pb2

    known = [
        error_details_pb2.BadRequest,
        error_details_pb2.RetryInfo,
        error_details_pb2.ErrorInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.ResourceInfo,
        error_details_pb2.DebugInfo,
        error_details_pb2.Help,
        error_details_pb2.LocalizedMessage,
    ]
    out: List[object] = []
    for key, value in metadata:
        if key != DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:  # noqa: BLE001 - undecodable details are dropped, the status still stands
            continue
        for any_detail in status.details:
            for cls in known:
                if any_detail.Is(cls.DESCRIPTOR):
                    msg = cls()
                    any_detail.Unpack(msg)
                    out.append(msg)
                    break
    return out


def from_rpc_error(err: grpc.RpcError, method: str = "") -> BrainstemError:
    """The :class:`BrainstemError` for a failed grpc (sync or aio) call."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or ""
    metadata: List[Tuple[str, object]] = []
    if hasattr(err, "trailing_metadata"):
        trailing = err.trailing_metadata() or ()
        metadata = [(k, v) for k, v in trailing]
    cls = _BY_CODE.get(code, Unknown)
    exc = cls(message, method=method, metadata=metadata, details=_unpack_details(metadata), code=code)
    #: The underlying grpc error (its debug string names the transport failure, if any).
    exc.rpc_error = err
    return exc


class ConfigurationError(ValueError):
    """``connect()`` could not find or read what it needs (endpoint, CA, certificate, key). Raised before
    any call; the message says what was looked for and how to point the client at it."""
