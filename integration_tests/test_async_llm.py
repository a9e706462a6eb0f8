"""``AsyncLLM`` on a tiny Llama folder: streaming, agreement with ``LLM``, concurrency,
aborts (explicit and by a consumer that leaves), overload, bad input, shutdown, and an
engine step that fails. Every test runs under a timeout, so a hang fails fast."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import pytest

from ferrule import LLM, SamplingParams
from ferrule_engine.async_llm import AsyncLLM, EngineClosed, EngineOverloaded

BLOCK = 4
ARGS = {"dtype": "float32", "block_size": BLOCK, "num_kv_blocks": 128}


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(tiny_llama_dir, **ARGS)


@pytest.fixture(scope="module")
def async_llm(tiny_llama_dir):
    engine = AsyncLLM(tiny_llama_dir, **ARGS)
    yield engine
    run(engine.shutdown(timeout=0))


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)


async def collect(engine: AsyncLLM, prompt, params, request_id: str, **kw):
    return [o async for o in engine.generate(prompt, params, request_id, **kw)]


async def settle(engine: AsyncLLM) -> None:
    """Wait until the engine thread has nothing running or waiting."""
    while engine.stats()["num_running"] or engine.stats()["num_waiting"]:
        await asyncio.sleep(0.01)


def test_streamed_snapshots_are_cumulative_and_end_finished(async_llm):
    outs = run(collect(async_llm, "The quick brown fox", greedy(10), "stream"))
    assert len(outs) == 10, "one output per generated token"
    for before, after in itertools.pairwise(outs):
        (a,), (b,) = before.outputs, after.outputs
        assert b.token_ids[: len(a.token_ids)] == a.token_ids
        assert len(b.token_ids) == len(a.token_ids) + 1
        assert b.text.startswith(a.text)
    assert [o.finished for o in outs] == [False] * 9 + [True]
    last = outs[-1]
    assert last.prompt == "The quick brown fox"
    assert last.prompt_token_ids == async_llm.tokenizer("The quick brown fox").input_ids
    assert last.outputs[0].finish_reason == "length"
    assert outs[0].outputs[0].finish_reason is None
    # snapshots do not change after they were handed over
    assert len(outs[0].outputs[0].token_ids) == 1
    assert outs[0].metrics.finished_time is None and last.metrics.finished_time is not None


def test_final_outputs_equal_llm_generate(async_llm, llm):
    prompts = ["Hello world", "def fib(n):", [5, 6, 7, 8, 9], list(range(20, 61))]

    async def main():
        streams = [collect(async_llm, p, greedy(12), f"eq{i}") for i, p in enumerate(prompts)]
        return [outs[-1] for outs in await asyncio.gather(*streams)]

    got = run(main())
    expected = llm.generate(prompts, greedy(12))
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    assert [o.outputs[0].text for o in got] == [o.outputs[0].text for o in expected]
    assert [o.prompt for o in got] == [o.prompt for o in expected]


def test_fifty_concurrent_requests_all_complete(async_llm, llm):
    prompts = [list(range(3 + k, 3 + k + 4 + k % 13)) for k in range(50)]
    lengths = [4 + k % 9 for k in range(50)]
    before = async_llm.stats()

    async def main():
        streams = [
            collect(async_llm, p, greedy(n), f"many{k}")
            for k, (p, n) in enumerate(zip(prompts, lengths, strict=True))
        ]
        outs = await asyncio.gather(*streams)
        await settle(async_llm)
        return [o[-1] for o in outs]

    got = run(main())
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in got)
    assert [len(o.outputs[0].token_ids) for o in got] == lengths
    expected = llm.generate(prompts, [greedy(n) for n in lengths])
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    stats = async_llm.stats()
    assert stats["generation_tokens"] - before["generation_tokens"] == sum(lengths)
    assert stats["prompt_tokens"] - before["prompt_tokens"] == sum(map(len, prompts))
    assert stats["num_running"] == stats["num_waiting"] == 0
    assert 0 <= stats["kv_usage"] <= 1 and 0 <= stats["prefix_hit_rate"] <= 1


def test_a_consumer_that_leaves_aborts_its_request_and_frees_its_blocks(async_llm):
    manager = async_llm.engine.scheduler.kv_manager
    free = manager.num_free_blocks
    before = async_llm.stats()["generation_tokens"]

    async def leave_after_two():
        seen = 0
        gen = async_llm.generate(list(range(10, 50)), greedy(200), "leaver")
        async with contextlib.aclosing(gen):
            async for _ in gen:
                seen += 1
                if seen == 2:
                    break
        await settle(async_llm)

    async def cancelled_task():
        first = asyncio.Event()

        async def consume():
            async for _ in async_llm.generate(list(range(60, 90)), greedy(200), "cancelled"):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle(async_llm)

    run(leave_after_two())
    run(cancelled_task())
    assert async_llm.stats()["generation_tokens"] - before < 100, "both ended early"
    assert manager.num_free_blocks == free
    assert not async_llm.engine.has_unfinished_requests()
    # the ids are free again
    assert run(collect(async_llm, [1, 2, 3], greedy(2), "leaver"))[-1].finished


def test_abort_ends_the_stream_with_finish_reason_abort(async_llm):
    async def main():
        outs = []
        async for out in async_llm.generate([7, 8, 9], greedy(200), "to-abort"):
            outs.append(out)
            if len(outs) == 1:
                await async_llm.abort("to-abort")
        await async_llm.abort("unknown-id")  # ignored
        return outs

    outs = run(main())
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"
    assert len(outs[-1].outputs[0].token_ids) < 200


def test_bad_prompts_raise_before_any_output(async_llm):
    async def first(prompt, request_id="bad"):
        return await anext(async_llm.generate(prompt, greedy(2), request_id))

    with pytest.raises(ValueError, match="empty"):
        run(first([]))
    with pytest.raises(ValueError, match="max_model_len"):
        run(first([1] * 600))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        run(first([10**6]))
    with pytest.raises(TypeError, match="token ids"):
        run(first({1, 2}))

    async def duplicate():
        gen = async_llm.generate([4, 5, 6], greedy(200), "dup")
        async with contextlib.aclosing(gen):
            await anext(gen)
            with pytest.raises(ValueError, match="already in use"):
                await first([4, 5], "dup")

    run(duplicate())
    run(settle(async_llm))
    assert not async_llm.engine.has_unfinished_requests()


def test_overflowing_max_waiting_raises_and_shutdown_aborts_what_is_left(tiny_llama_dir):
    engine = AsyncLLM(tiny_llama_dir, max_waiting=1, max_num_seqs=1, **ARGS)

    async def main():
        running = engine.generate([3, 4, 5], greedy(200), "running")
        first = await anext(running)
        assert not first.finished
        waiting = asyncio.create_task(collect(engine, [6, 7, 8], greedy(200), "waiting"))
        await asyncio.sleep(0)  # it queues its request
        assert engine.stats()["num_waiting"] == 1
        with pytest.raises(EngineOverloaded, match="max_waiting=1"):
            await anext(engine.generate([9, 10], greedy(2), "one-too-many"))
        await engine.shutdown(timeout=0)
        rest = [o async for o in running]
        return rest[-1], (await waiting)[-1]

    running, waiting = run(main())
    assert running.outputs[0].finish_reason == "abort"
    assert waiting.outputs[0].finish_reason == "abort" and waiting.outputs[0].token_ids == []
    assert not engine.is_alive()


def test_shutdown_lets_requests_finish_then_refuses_new_ones(tiny_llama_dir):
    engine = AsyncLLM(tiny_llama_dir, **ARGS)
    assert engine.is_alive()

    async def main():
        gen = engine.generate([3, 4, 5], greedy(20), "finishing")
        await anext(gen)
        stopping = asyncio.create_task(engine.shutdown())
        rest = [o async for o in gen]
        await stopping
        await engine.shutdown()  # again: harmless
        return rest[-1]

    last = run(main())
    assert last.outputs[0].finish_reason == "length" and len(last.outputs[0].token_ids) == 20
    assert not engine.is_alive() and not engine._loop.thread.is_alive()
    with pytest.raises(EngineClosed, match="shut down"):
        run(anext(engine.generate([1, 2], greedy(2), "late")))
    assert engine.stats()["num_running"] == 0


def test_a_failing_step_fails_requests_under_way_instead_of_hanging(tiny_llama_dir):
    engine = AsyncLLM(tiny_llama_dir, max_num_seqs=1, **ARGS)

    def broken_step():
        raise RuntimeError("boom: the device fell over")

    async def main():
        running = engine.generate([3, 4, 5], greedy(200), "running")
        await anext(running)
        waiting = asyncio.create_task(collect(engine, [6, 7], greedy(200), "waiting"))
        await asyncio.sleep(0)
        engine.engine.step = broken_step
        with pytest.raises(EngineClosed, match="died: RuntimeError: boom") as caught:
            async for _ in running:
                pass
        assert isinstance(caught.value.__cause__, RuntimeError)
        with pytest.raises(EngineClosed, match="boom"):
            await waiting

    run(main(), timeout=20)
    deadline = time.monotonic() + 5
    while engine._loop.thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.is_alive() and not engine._loop.thread.is_alive()
    with pytest.raises(EngineClosed, match="died"):
        run(anext(engine.generate([1, 2], greedy(2), "late")), timeout=5)
    run(engine.shutdown(), timeout=5)  # returns at once
