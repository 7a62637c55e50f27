"""Failed calls raise brainstem.errors exceptions carrying the daemon's google.rpc details."""

import time

import pytest

import brainstem
from brainstem import errors


def test_a_denied_call_raises_permission_denied(daemon):
    cert, key = daemon.issue_cert("pytest-stranger")
    with daemon.connect(cert=cert, key=key) as stranger:
        assert stranger.admin.who_am_i().principal == "pytest-stranger"
        with pytest.raises(errors.PermissionDenied) as info:
            stranger.admin.get_status()
    assert "admin.status" in info.value.message
    assert info.value.method == "/brainstem.v1.Admin/GetStatus"


def test_invalid_argument_carries_the_field_violations(bs):
    with pytest.raises(errors.InvalidArgument) as info:
        bs.admin.ping(delay_ms=10001)
    assert info.value.fields == ["delay_ms"]
    assert "10000" in info.value.violations[0].description
    with pytest.raises(errors.InvalidArgument) as info:
        bs.policy.check(action="web.read", context={"ratio": 0.5})
    assert info.value.fields == ["context.ratio"]


def test_not_found(bs):
    with pytest.raises(errors.NotFound):
        bs.supervisor.restart_actor(name="no-such-actor")


def test_rate_limited_carries_the_retry_info_delay(bs):
    # Policy.Validate is limited to 60 a minute (burst 60) per principal by default; this test is the
    # session's only Validate caller besides test_services' one call.
    policy = '@id("p") permit(principal, action, resource);'
    with pytest.raises(errors.RateLimited) as info:
        for _ in range(200):
            bs.policy.validate(policies=policy, retry=brainstem.NO_RETRY)
    delay = info.value.retry_delay
    assert delay is not None and 0 < delay <= 1.5, delay
    assert errors.ResourceExhausted is errors.RateLimited

    # The same call with retries: the client waits at least the RetryInfo delay, then succeeds.
    # The bucket refills one token a second, so a refusal whose delay is nearly over says nothing
    # about the next call; drain until a refusal is at least half a second from its token, so the
    # retried call below is certainly refused first.
    for _ in range(20):
        try:
            bs.policy.validate(policies=policy, retry=brainstem.NO_RETRY)
        except errors.RateLimited as refused:
            if refused.retry_delay is not None and refused.retry_delay >= 0.5:
                break
            # Let the token arrive: the next call takes it, the one after is refused afresh.
            time.sleep(refused.retry_delay or 0.1)
    else:
        pytest.fail("no refusal with at least 0.5 s to its next token")
    waits = []
    bs.on_retry = lambda method, attempt, wait, err: waits.append((method, wait, err))
    try:
        reply = bs.policy.validate(policies=policy)
    finally:
        bs.on_retry = None
    assert reply.policy_count == 1
    assert waits, "the rate-limited call was not retried"
    method, wait, err = waits[0]
    assert method == "/brainstem.v1.Policy/Validate"
    assert isinstance(err, errors.RateLimited) and wait >= err.retry_delay


def test_unreachable_is_unavailable(daemon):
    from conftest import free_port

    with brainstem.connect(f"127.0.0.1:{free_port()}", state_dir=daemon.state_dir, timeout=5, retry=brainstem.NO_RETRY, breaker=False) as bs:
        with pytest.raises(errors.Unavailable):
            bs.admin.ping()


def test_a_bearer_token_narrows_a_call(bs):
    narrow = bs.tokens.issue(principal="spiffe://brainstem.dev/admin", capabilities=["vision.*"], ttl_seconds=60)
    with pytest.raises(errors.PermissionDenied):
        bs.admin.get_status(bearer=narrow.token)
    assert bs.admin.get_status().boot_count >= 1


def test_unavailable_names_the_likely_cause(daemon):
    from conftest import free_port

    with brainstem.connect(f"127.0.0.1:{free_port()}", state_dir=daemon.state_dir, retry=brainstem.NO_RETRY, breaker=False) as bs:
        with pytest.raises(errors.Unavailable) as info:
            bs.admin.ping()
    assert "is brainstemd running" in str(info.value), str(info.value)
