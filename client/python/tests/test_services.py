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


def test_registry(bs, daemon):
    import hashlib
    import json
    import os

    root = os.path.join(daemon.state_dir, "artifacts")
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, f"pytest-{time.time_ns()}.bin")
    data = os.urandom(4096)
    with open(path, "wb") as f:
        f.write(data)
    name = f"pytest/model-{time.time_ns()}"
    reg = bs.registry.register(name=name, version="1.0.0", algorithm="test", weights_path=path,
                               metrics={"accuracy": 0.9}, tags={"team": "py"})
    assert (reg.version, reg.weights_sha256) == ("1.0.0", hashlib.sha256(data).hexdigest())
    assert bs.registry.get_latest(name=name).version == "1.0.0"
    bs.registry.set_alias(name=name, alias="production", version="1.0.0")
    history = bs.registry.alias_history(name=name, alias="production")
    assert [e.version for e in history.entries] == ["1.0.0"] and history.entries[0].principal
    bs.registry.record_quality_metric(name=name, version="1.0.0", metric="accuracy", value=0.5)
    drift = bs.registry.detect_drift(name=name, version="1.0.0", metric="accuracy", threshold_percent=5,
                                     window_seconds=3600)
    assert drift.drifted
    assert bs.registry.verify_artifacts(name=name, version="1.0.0").ok
    card = json.loads(bs.registry.export_model_card(name=name, version="1.0.0").card)
    assert card, "a signed card"
    # Bad input: a declared hash that differs, a file outside the roots, a bad name.
    with pytest.raises(errors.FailedPrecondition, match=hashlib.sha256(data).hexdigest()):
        bs.registry.register(name=name, version="1.0.1", weights_path=path, weights_sha256="0" * 64)
    with pytest.raises(errors.PermissionDenied):
        bs.registry.register(name=name, version="1.0.2", weights_path="/etc/hostname")
    with pytest.raises(errors.InvalidArgument) as bad:
        bs.registry.register(name="Bad Name", weights_path=path)
    assert "name" in bad.value.fields
    with pytest.raises(errors.NotFound):
        bs.registry.get(name=name, version="9.9.9")


def test_learning(bs):
    first = bs.learning.feedback(features=[0.5, -1.0, 2.0], label=1.0, event_id=f"py-{time.time_ns()}")
    assert first.accepted and not first.duplicate
    again = bs.learning.feedback(features=[0.5, -1.0, 2.0], label=1.0)
    assert again.duplicate or again.accepted
    score = bs.learning.predict(features=[0.5, -1.0, 2.0]).score
    assert 0.0 <= score <= 1.0
    assert bs.learning.get_stats().events_learned >= 0
    with pytest.raises(errors.InvalidArgument) as bad:
        bs.learning.feedback(features=[0.5, float("nan"), 2.0], label=1.0)
    assert bad.value.fields


def test_vision_and_voice(bs):
    from brainstem.v1 import perception_pb2

    source = f"py-cam-{time.time_ns()}"

    def frames():
        for x in (10, 10, 200):
            data = bytearray(64 * 48)
            for y in range(10, 30):
                for dx in range(12):
                    data[y * 64 + (x * 64 // 640 + dx) % 64] = 255
            yield perception_pb2.Frame(source=source, width=64, height=48, format="gray8", data=bytes(data))

    reply = bs.vision.submit_frames(frames())
    assert reply.received == 3 and reply.duplicates >= 1
    with pytest.raises(errors.InvalidArgument) as bad:
        bs.vision.submit_frames(iter([perception_pb2.Frame(source=source, width=64, height=48, format="bmp",
                                                          data=b"x")]))
    assert "format" in " ".join(bad.value.fields)
    with pytest.raises(errors.InvalidArgument):
        bs.voice.submit_audio(iter([perception_pb2.AudioChunk(source="py-mic", sample_rate=16000, pcm=b"odd")]))
    silence = bs.voice.submit_audio(iter([perception_pb2.AudioChunk(source="py-mic", sample_rate=16000,
                                                                    pcm=bytes(3200))]))
    assert list(silence.segments) == []


def test_log_level(bs):
    before = bs.admin.get_log_level()
    changed = bs.admin.set_log_level(filter="warn,brainstemd=info")
    assert changed.filter == "warn,brainstemd=info"
    with pytest.raises(errors.InvalidArgument) as bad:
        bs.admin.set_log_level(filter="brainstemd=loud")
    assert bad.value.fields == ["filter"]
    bs.admin.set_log_level(filter=before.filter)
