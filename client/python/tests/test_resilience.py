"""Deadlines, retries (only when safe), backoff with jitter and the circuit breaker."""

import pytest

import brainstem
from brainstem import errors
from brainstem.resilience import BreakerState, CircuitBreaker, RetryPolicy
from conftest import free_port


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_backoff_is_exponential_capped_and_jittered():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    top = lambda: 1.0  # noqa: E731 - the largest draw
    assert [policy.backoff(n, top) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert policy.backoff(3, lambda: 0.0) == 0.0
    assert policy.delay(1, retry_info=2.5, rng=top) == 2.5, "RetryInfo is a floor"
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_a_deadline_bounds_the_call(bs):
    with pytest.raises(errors.DeadlineExceeded):
        bs.admin.ping(delay_ms=2000, timeout=0.3)


def test_only_safe_calls_are_retried(daemon):
    waits = []
    dead = f"127.0.0.1:{free_port()}"
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    with brainstem.connect(dead, state_dir=daemon.state_dir, retry=policy, breaker=False, timeout=10,
                           on_retry=lambda *a: waits.append(a)) as bs:
        with pytest.raises(errors.Unavailable):
            bs.episodic.store(episode={"text": "x", "source": "t"})
        assert waits == [], "a mutating call without an idempotency key is not retried"
        with pytest.raises(errors.Unavailable):
            bs.admin.ping()
        assert len(waits) == 2, "a NO_SIDE_EFFECTS method is retried up to max_attempts"
        waits.clear()
        with pytest.raises(errors.Unavailable):
            bs.episodic.store(episode={"text": "x", "source": "t"}, idempotency_key=brainstem.new_idempotency_key())
        assert len(waits) == 2, "a keyed mutating call is retried"
        assert bs.retries == 4


def test_breaker_state_machine_on_an_injected_clock():
    clock = FakeClock()
    changes = []
    b = CircuitBreaker(failure_threshold=3, reset_timeout=5.0, clock=clock)
    b.on_change.append(lambda old, new: changes.append((old, new)))
    unavailable = brainstem.errors.Unavailable.code
    for _ in range(2):
        assert b.allow()
        b.record(unavailable)
    assert b.state is BreakerState.CLOSED
    assert b.allow()
    b.record(brainstem.errors.PermissionDenied.code)  # the endpoint answered: not a failure
    assert b.stats().consecutive_failures == 0
    for _ in range(3):
        b.allow()
        b.record(unavailable)
    assert b.state is BreakerState.OPEN and not b.allow()
    assert b.stats().rejected == 1 and b.retry_after() == 5.0
    clock.now += 5.0
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() and not b.allow(), "one probe at a time"
    b.record(unavailable)
    assert b.state is BreakerState.OPEN, "a failed probe opens again"
    clock.now += 5.0
    assert b.allow()
    b.record(None)
    assert b.state is BreakerState.CLOSED
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_breaker_opens_on_a_stopped_daemon_and_recovers_when_it_returns(own_daemon):
    first = own_daemon()
    addr, state_dir = first.addr, first.state_dir
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=30.0, clock=clock)
    connect = lambda: brainstem.connect(addr, state_dir=state_dir, breaker=breaker, retry=brainstem.NO_RETRY, timeout=5)  # noqa: E731
    with connect() as bs:
        assert bs.admin.ping().payload == b""
        first.stop()
        for _ in range(2):
            with pytest.raises(errors.Unavailable) as info:
                bs.admin.ping()
            assert not isinstance(info.value, errors.CircuitOpen)
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(errors.CircuitOpen) as info:
            bs.admin.ping()
        assert info.value.retry_after == 30.0
        assert breaker.stats().rejected == 1

    own_daemon(listen=addr)  # the same state dir and address
    clock.now += 30.0
    assert breaker.state is BreakerState.HALF_OPEN
    with connect() as bs:  # a fresh channel: the old one backs off its reconnects
        assert bs.admin.ping(payload=b"probe").payload == b"probe"
    assert breaker.state is BreakerState.CLOSED


def test_clients_of_one_endpoint_share_its_breaker(daemon):
    a = brainstem.connect(daemon.addr, state_dir=daemon.state_dir)
    b = brainstem.connect(daemon.addr, state_dir=daemon.state_dir)
    try:
        assert a.breaker is b.breaker
        assert brainstem.resilience.breakers()[daemon.addr] is a.breaker
    finally:
        a.close()
        b.close()


def test_automatic_idempotency_keys_make_mutating_calls_retryable(daemon):
    waits = []
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
    with brainstem.connect(f"127.0.0.1:{free_port()}", state_dir=daemon.state_dir, retry=policy, breaker=False,
                           auto_idempotency_keys=True, on_retry=lambda *a: waits.append(a)) as bs:
        with pytest.raises(errors.Unavailable):
            bs.tokens.rotate_key()
    assert [w[0] for w in waits] == ["/brainstem.v1.Tokens/RotateKey"]


def test_automatic_keys_reach_the_daemon(daemon):
    stored = 'brainstem_idempotency_calls_total{outcome="stored"}'
    before = daemon.metric(stored)
    with daemon.connect(auto_idempotency_keys=True) as bs:
        a = bs.episodic.store(episode={"text": "auto", "source": "pytest-auto", "embedding": [0.1] * 384})
        b = bs.episodic.store(episode={"text": "auto", "source": "pytest-auto", "embedding": [0.1] * 384})
        bs.admin.ping()  # a read: no key
    assert a.id != b.id, "each call gets its own key: two stores"
    assert daemon.metric(stored) == before + 2
