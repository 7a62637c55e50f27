"""A round trip through every brainstem.v1 service against the real daemon."""

import time

import pytest

from brainstem import errors

AGENT = "spiffe://brainstem.dev/agent/web"
DIM = 384


def unit(i):
    return [1.0 if j == i else 0.01 for j in range(DIM)]


def test_admin(bs):
    assert bs.admin.ping(payload=b"hello").payload == b"hello"
    me = bs.admin.who_am_i()
    assert me.principal == "spiffe://brainstem.dev/admin" and "*" in me.capabilities
    assert bs.admin.get_status().boot_count >= 1


def test_policy(bs):
    reply = bs.policy.check(action="web.post", resource="https://example.org", context={"hour": 10, "source": "pytest"})
    assert not reply.allowed and list(reply.reasons) == ["forbid-web-post"]
    assert bs.policy.check(action="vision.capture").allowed
    batch = bs.policy.batch_check(items=[{"action": "vision.capture"}, {"action": "web.post", "resource": "https://example.org"}])
    assert [r.allowed for r in batch.results] == [True, False]
    explained = bs.policy.explain(action="vision.capture")
    assert explained.allowed and "permit-vision-capture" in explained.matched_permits
    shown = bs.policy.get_policy_set()
    assert shown.digest and len(shown.policies) >= 1
    valid = bs.policy.validate(policies='@id("p") permit(principal, action, resource);')
    assert valid.policy_count == 1


def test_audit(bs):
    bs.policy.check(action="web.read", resource="https://docs.rs")
    page = bs.audit.query(newest_first=True, limit=5)
    assert len(page.records) >= 1


def test_guardrails(bs):
    nav = bs.guardrails.check_navigation(url="https://unknown.example/", correlation_id="pytest")
    assert not nav.allowed and nav.reasons
    click = bs.guardrails.check_click(url="https://unknown.example/", target="#buy")
    assert isinstance(click.allowed, bool) and click.decision_id
    form = bs.guardrails.check_form_submit(url="https://unknown.example/", fields=[{"name": "buy", "value": "1"}])
    assert not form.allowed


def test_tokens(bs):
    issued = bs.tokens.issue(principal=AGENT, capabilities=["vision.*"], ttl_seconds=600)
    assert issued.token.startswith("bst1.")
    assert bs.tokens.verify(token=issued.token, capability="vision.capture").valid
    child = bs.tokens.attenuate(token=issued.token, capabilities=["vision.capture"], ttl_seconds=60)
    assert bs.tokens.verify(token=child.token, capability="vision.capture").valid
    listed = bs.tokens.list(principal=AGENT)
    assert issued.id in [t.id for t in listed.tokens]
    bs.tokens.revoke(id=issued.id)
    assert not bs.tokens.verify(token=child.token).valid, "revoking a parent revokes its children"
    rotated = bs.tokens.rotate_key()
    assert rotated.key_id


def test_supervisor(bs):
    actors = {a.name: a for a in bs.supervisor.list_actors().actors}
    assert actors["episodic"].state == "running"
    before = bs.supervisor.get_actor(name="episodic").actor
    after = bs.supervisor.restart_actor(name="episodic").actor
    assert after.state == "running" and after.restarts == before.restarts + 1
    stopped = bs.supervisor.stop_actor(name="episodic").actor
    assert stopped.state == "stopped"
    started = bs.supervisor.start_actor(name="episodic").actor
    assert started.state == "running"
    assert started.restarts == after.restarts, "starting a stopped actor is not a restart"
    assert bs.supervisor.get_health().live
    stream = bs.supervisor.watch_actors(name="episodic", timeout=10)
    first = next(iter(stream))
    stream.cancel()
    assert first.actor.name == "episodic"


def test_episodic(bs):
    stored = bs.episodic.store(episode={"text": "the kettle boiled", "source": "pytest", "kind": "observation", "embedding": unit(5)})
    batch = bs.episodic.store_batch(episodes=[{"text": "a door closed", "source": "pytest", "embedding": unit(9)}])
    assert len(batch.ids) == 1
    best = bs.episodic.query(embedding=unit(5), k=1).results[0]
    assert best.episode.id == stored.id
    assert bs.episodic.get(id=stored.id).episode.text == "the kettle boiled"
    assert any(e.id == batch.ids[0] for e in bs.episodic.recent(n=10).episodes)
    assert bs.episodic.forget(ids=[stored.id]).forgotten == 1
    with pytest.raises(errors.NotFound):
        bs.episodic.get(id=stored.id)


def test_secrets(bs):
    path = f"/pytest/db-{time.time_ns()}"
    put = bs.secrets.put(path=path, value=b"pytest-value-0123456789", cas=0)
    assert put.version == 1
    got = bs.secrets.get(path=path)
    assert (got.value, got.version) == (b"pytest-value-0123456789", 1)
    with pytest.raises(errors.FailedPrecondition) as cas:
        bs.secrets.put(path=path, value=b"second-value-xyz", cas=5)
    assert "not 5" in str(cas.value) and b"pytest-value" not in str(cas.value).encode()
    assert bs.secrets.put(path=path, value=b"second-value-xyz", cas=1).version == 2
    bs.secrets.delete(path=path, versions=[2])
    with pytest.raises(errors.NotFound, match="is deleted"):
        bs.secrets.get(path=path)
    assert bs.secrets.get(path=path, version=1).value == b"pytest-value-0123456789"
    meta = bs.secrets.metadata(path=path)
    assert [(v.version, v.deleted, v.destroyed) for v in meta.versions] == [(1, False, False), (2, True, False)]
    assert path in bs.secrets.list(prefix="/pytest").paths
    with pytest.raises(errors.InvalidArgument) as bad:
        bs.secrets.put(path="/pytest/../etc", value=b"x")
    assert bad.value.fields == ["path"]
    # The headers come once the watch is subscribed: the put after them is in the stream.
    stream = bs.secrets.watch(prefix="/pytest", timeout=10)
    stream.initial_metadata()
    rotated = f"{path}-gen"
    bs.secrets.put(path=rotated, generator="hex:32")
    event = next(e for e in stream if e.path == rotated)
    stream.cancel()
    assert (event.kind, event.version) == ("put", 1)
    assert len(bs.secrets.get(path=rotated).value) == 32
