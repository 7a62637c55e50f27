"""The asyncio flavour (grpc.aio): the same services, errors, retries and streams."""

import asyncio

import pytest

import brainstem
from brainstem import errors


def run(coro):
    return asyncio.run(coro)


def test_async_round_trips_and_errors(daemon):
    async def main():
        async with daemon.connect_async() as bs:
            assert isinstance(bs, brainstem.AsyncClient)
            assert (await bs.admin.ping(payload=b"aio")).payload == b"aio"
            assert (await bs.admin.who_am_i()).principal == "spiffe://brainstem.dev/admin"
            assert not (await bs.policy.check(action="web.post", resource="https://example.org")).allowed
            with pytest.raises(errors.InvalidArgument) as info:
                await bs.admin.ping(delay_ms=10001)
            assert info.value.fields == ["delay_ms"]
            with pytest.raises(errors.NotFound):
                await bs.supervisor.get_actor(name="no-such-actor")
            results = await asyncio.gather(*(bs.admin.ping(payload=bytes([i])) for i in range(8)))
            assert [r.payload for r in results] == [bytes([i]) for i in range(8)]
            stream = bs.supervisor.watch_actors(name="episodic", timeout=10)
            async for event in stream:
                assert event.actor.name == "episodic"
                break
            stream.cancel()

    run(main())


def test_async_idempotent_store(daemon):
    async def main():
        async with daemon.connect_async() as bs:
            key = brainstem.new_idempotency_key()
            ep = {"text": "aio", "source": "pytest-aio", "embedding": [0.25] * 384}
            a = await bs.episodic.store(episode=ep, idempotency_key=key)
            b = await bs.episodic.store(episode=ep, idempotency_key=key)
            assert a.id == b.id

    run(main())


def test_async_retries_only_safe_calls(daemon):
    from conftest import free_port

    waits = []

    async def main():
        policy = brainstem.RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
        async with brainstem.connect_async(f"127.0.0.1:{free_port()}", state_dir=daemon.state_dir, retry=policy,
                                           breaker=False, timeout=10, on_retry=lambda *a: waits.append(a)) as bs:
            with pytest.raises(errors.Unavailable):
                await bs.admin.ping()
            with pytest.raises(errors.Unavailable):
                await bs.tokens.rotate_key()

    run(main())
    assert [w[0] for w in waits] == ["/brainstem.v1.Admin/Ping"]
