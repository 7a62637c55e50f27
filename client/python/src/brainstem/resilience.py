"""Retries with exponential backoff and jitter, and a per-endpoint circuit breaker.

Retries: a call that fails with UNAVAILABLE or RESOURCE_EXHAUSTED is tried again, but only when that
is safe — the method is declared idempotent in the proto (``option idempotency_level``:
``NO_SIDE_EFFECTS`` or ``IDEMPOTENT``), or the call carries an ``idempotency-key`` (the daemon then
answers a repeat with the first call's result). The wait before attempt *n* is drawn uniformly from
``[0, min(max_backoff, initial_backoff × multiplier^(n-1))]`` ("full jitter"), and never shorter than the
RetryInfo delay the daemon sent. Every attempt and every wait fits inside the call's one deadline: a
wait that would end past it is not taken and the last error is raised.

Circuit breaker (one per endpoint, shared by every client of that endpoint in the process): *closed*
counts consecutive failures that say the endpoint is in trouble (UNAVAILABLE, DEADLINE_EXCEEDED); at
``failure_threshold`` it *opens* and calls fail at once with :class:`brainstem.errors.CircuitOpen`; after
``reset_timeout`` seconds it is *half-open* and lets one probe call through: success closes it, failure
opens it again. ``state``, ``stats()`` and ``on_change`` make it observable.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import grpc

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
BREAKER_FAILURE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class RetryPolicy:
    """How a retry-safe call is retried. ``max_attempts`` counts the first attempt (1 = no retries)."""

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    codes: frozenset = RETRYABLE_CODES

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """The jittered wait before retry number ``retry`` (1 for the first retry)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return rng() * ceiling

    def delay(self, retry: int, retry_info: Optional[float], rng: Callable[[], float] = random.random) -> float:
        """The wait before retry ``retry``: the jittered backoff, at least the server's RetryInfo delay."""
        wait = self.backoff(retry, rng)
        if retry_info is not None:
            wait = max(wait, retry_info)
        return wait


#: No retries at all.
NO_RETRY = RetryPolicy(max_attempts=1)


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class BreakerStats:
    state: BreakerState
    consecutive_failures: int
    failures: int
    successes: int
    rejected: int
    opened: int
    #: Seconds until an open breaker lets a probe through (0 unless open).
    retry_after: float


@dataclass
class CircuitBreaker:
    """closed → open after ``failure_threshold`` consecutive failures → half-open probe after
    ``reset_timeout`` seconds → closed on success, open on failure. ``clock`` is injectable for tests."""

    failure_threshold: int = 5
    reset_timeout: float = 10.0
    clock: Callable[[], float] = time.monotonic
    on_change: List[Callable[[BreakerState, BreakerState], None]] = field(default_factory=list)

    def __post_init__(self):
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._failures = 0
        self._successes = 0
        self._rejected = 0
        self._opened = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current()

    def _current(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self.clock() - self._opened_at >= self.reset_timeout:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if new is BreakerState.OPEN:
            self._opened_at = self.clock()
            self._opened += 1
        if new is not BreakerState.HALF_OPEN:
            self._probe_in_flight = False
        if old is not new:
            for listener in list(self.on_change):
                try:
                    listener(old, new)
                except Exception:  # noqa: BLE001 - an observer must not break calls
                    pass

    def retry_after(self) -> float:
        with self._lock:
            if self._current() is BreakerState.OPEN:
                return max(0.0, self.reset_timeout - (self.clock() - self._opened_at))
            return 0.0

    def allow(self) -> bool:
        """Whether a call may go out now. In half-open, only one probe at a time."""
        with self._lock:
            state = self._current()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            self._rejected += 1
            return False

    def record(self, code: Optional[grpc.StatusCode]) -> None:
        """The outcome of a call that :meth:`allow` let through (``None`` or OK: success). A code that
        says nothing about the endpoint's health (PERMISSION_DENIED, NOT_FOUND, …) counts as success:
        the endpoint answered."""
        with self._lock:
            if code is not None and code in BREAKER_FAILURE_CODES:
                self._failures += 1
                self._consecutive += 1
                if self._state is BreakerState.HALF_OPEN or self._consecutive >= self.failure_threshold:
                    self._move(BreakerState.OPEN)
            else:
                self._successes += 1
                self._consecutive = 0
                if self._state is not BreakerState.CLOSED:
                    self._move(BreakerState.CLOSED)
                self._probe_in_flight = False

    def release(self) -> None:
        """A call let through ended without an outcome (cancelled locally): free the probe slot."""
        with self._lock:
            self._probe_in_flight = False

    def stats(self) -> BreakerStats:
        with self._lock:
            state = self._current()
            wait = max(0.0, self.reset_timeout - (self.clock() - self._opened_at)) if state is BreakerState.OPEN else 0.0
            return BreakerStats(
                state=state,
                consecutive_failures=self._consecutive,
                failures=self._failures,
                successes=self._successes,
                rejected=self._rejected,
                opened=self._opened,
                retry_after=wait,
            )


_BREAKERS: Dict[str, CircuitBreaker] = {}
_BREAKERS_LOCK = threading.Lock()


def breaker_for(endpoint: str, factory: Callable[[], CircuitBreaker]) -> CircuitBreaker:
    """The process-wide breaker of ``endpoint``, made by ``factory`` on first use."""
    with _BREAKERS_LOCK:
        breaker = _BREAKERS.get(endpoint)
        if breaker is None:
            breaker = _BREAKERS[endpoint] = factory()
        return breaker


def breakers() -> Dict[str, CircuitBreaker]:
    """Every endpoint's breaker in this process (a copy of the registry)."""
    with _BREAKERS_LOCK:
        return dict(_BREAKERS)
