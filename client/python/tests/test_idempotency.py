"""The daemon honours the idempotency-key metadata entry on mutating RPCs."""

import pytest

import brainstem
from brainstem import errors

DIM = 384


def episode(text):
    return {"text": text, "source": "pytest-idempotency", "embedding": [0.5] * DIM}


def count(bs):
    return len(bs.episodic.recent(n=100, filter={"source": "pytest-idempotency"}).episodes)


def test_a_repeated_key_returns_the_first_result_and_applies_once(bs):
    before = count(bs)
    key = brainstem.new_idempotency_key()
    first = bs.episodic.store(episode=episode("once"), idempotency_key=key)
    again = bs.episodic.store(episode=episode("once"), idempotency_key=key)
    assert again.id == first.id
    assert count(bs) == before + 1
    bs.episodic.store(episode=episode("once"))
    assert count(bs) == before + 2, "without a key every call applies"


def test_a_repeated_issue_returns_the_same_token(bs):
    key = brainstem.new_idempotency_key()
    req = dict(principal="spiffe://brainstem.dev/agent/web", capabilities=["vision.*"], ttl_seconds=60)
    a = bs.tokens.issue(**req, idempotency_key=key)
    b = bs.tokens.issue(**req, idempotency_key=key)
    c = bs.tokens.issue(**req)
    assert (a.id, a.token) == (b.id, b.token)
    assert c.id != a.id


def test_a_key_reused_for_another_request_is_invalid_argument(bs):
    key = brainstem.new_idempotency_key()
    bs.episodic.store(episode=episode("first"), idempotency_key=key)
    with pytest.raises(errors.InvalidArgument) as info:
        bs.episodic.store(episode=episode("second"), idempotency_key=key)
    assert info.value.fields == ["idempotency-key"]


def test_malformed_keys_are_invalid_argument(bs):
    for bad in ("has space", "k" * 129):
        with pytest.raises(errors.InvalidArgument) as info:
            bs.admin.ping(idempotency_key=bad)
        assert info.value.fields == ["idempotency-key"], bad


def test_keys_are_per_principal(daemon, bs):
    key = brainstem.new_idempotency_key()
    mine = bs.episodic.store(episode=episode("per principal"), idempotency_key=key)
    cert, key_path = daemon.issue_cert("pytest-other")
    with daemon.connect(cert=cert, key=key_path) as other:
        # Another principal's same key is its own operation (here refused: it holds no grant).
        with pytest.raises(errors.PermissionDenied):
            other.episodic.store(episode=episode("per principal"), idempotency_key=key)
    assert bs.episodic.store(episode=episode("per principal"), idempotency_key=key).id == mine.id


def test_a_keyed_repeat_survives_a_daemon_restart(own_daemon):
    d = own_daemon()
    key = brainstem.new_idempotency_key()
    with d.connect() as bs:
        first = bs.tokens.issue(principal="spiffe://brainstem.dev/agent/web", capabilities=["web.read"], ttl_seconds=60, idempotency_key=key)
    addr = d.addr
    d.stop()
    d2 = own_daemon(listen=addr)
    with d2.connect() as bs:
        again = bs.tokens.issue(principal="spiffe://brainstem.dev/agent/web", capabilities=["web.read"], ttl_seconds=60, idempotency_key=key)
    assert again.id == first.id
