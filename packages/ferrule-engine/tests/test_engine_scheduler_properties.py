"""Property tests: random workloads through the Scheduler and KVCacheManager.

A fake model stands in for the network. It keeps a simulated paged KV cache: every scheduled
token writes ``(token id, position)`` into the slot its block table gives, and, after all
writes of the step (as a real layer writes the whole batch before attention reads), every
scheduled sequence reads back each position its new tokens can see, through its block table,
and checks it against the request's true history. A wrong prefix hit, a block reused while
still in use, or a sliding-window block released too early shows up as a wrong read.

A position's "K/V" is its token plus, inside a ``block_extra_keys`` span, the span's key and
the offset in it (as an image embedding would be), so a hit that ignored the extra keys reads
wrong content too. Every scheduled sequence must compute at least one token (a step that
computes nothing produces no logits).

Its next token is a hash of the request's history, so outputs are a pure function of the
prompt and the stop rules: a naive token-by-token oracle gives the expected outputs, which
must hold with prefix caching on and off, with preemption forced by small pools, and with
aborts (a request is aborted once it has ``abort_after`` outputs, a rule independent of
scheduling, so its expected outputs are known too).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import pytest

# hypothesis comes with the engine's `test` extra (every nox session installs it); the GPU
# session installs packages without their extras, and these tests need no GPU anyway.
pytest.importorskip("hypothesis")

from hypothesis import given, settings
from hypothesis import strategies as st

from ferrule_engine.config import SchedulerConfig
from ferrule_engine.kv_cache import KVCacheManager
from ferrule_engine.request import Request
from ferrule_engine.scheduler import Scheduler

VOCAB = 12
EOS = 0
MAX_MODEL_LEN = 40
STEP_LIMIT = 3000


@dataclass
class Params:
    max_tokens: int | None = 8
    min_tokens: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1


@dataclass
class Spec:
    prompt: list[int]
    params: Params
    priority: int
    arrival_step: int
    abort_after: int | None
    extra_keys: list[tuple[int, int, object]]


def embedding(tokens: list[int], spans: list[tuple[int, int, object]], p: int) -> tuple:
    """What the model stores for position ``p``: the token, and any extra key covering it."""
    keys = tuple((key, p - start) for start, end, key in spans if start <= p < end)
    return (tokens[p], *keys)


def next_token(tokens: list[int], spans: list[tuple[int, int, object]]) -> int:
    history = [embedding(tokens, spans, p) for p in range(len(tokens))]
    return zlib.crc32(repr(history).encode()) % VOCAB


def expected_outputs(spec: Spec) -> tuple[list[int], str]:
    """Token by token, no scheduler: the outputs and finish reason the engine must give."""
    prompt, params, out = spec.prompt, spec.params, []
    while True:
        if spec.abort_after is not None and len(out) >= spec.abort_after:
            return out, "abort"
        token = next_token(prompt + out, spec.extra_keys)
        out.append(token)
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else {EOS})
        if len(out) >= params.min_tokens and token in stop_ids:
            return out, "stop"
        if params.max_tokens is not None and len(out) >= params.max_tokens:
            return out, "length"
        if len(prompt) + len(out) >= MAX_MODEL_LEN:
            return out, "length"


class FakeModel:
    """Writes and reads a simulated paged KV cache; samples ``next_token`` of the history."""

    def __init__(self, num_blocks: int, block_size: int, window: int | None) -> None:
        self.slots: list[tuple[int, int] | None] = [None] * (num_blocks * block_size)
        self.block_size, self.window = block_size, window

    def _slot(self, block_ids: list[int], position: int) -> int:
        block = block_ids[position // self.block_size]
        assert block != 0, f"position {position} maps to the null block"
        return block * self.block_size + position % self.block_size

    def step(self, scheduled) -> dict[str, int]:
        for item in scheduled:
            assert item.num_new_tokens >= 1, f"{item.request_id} scheduled with no tokens"
            tokens, spans = item.request.all_token_ids, item.request.block_extra_keys
            for p in range(item.start_position, item.start_position + item.num_new_tokens):
                self.slots[self._slot(item.block_ids, p)] = (embedding(tokens, spans, p), p)
        sampled = {}
        for item in scheduled:
            tokens, spans = item.request.all_token_ids, item.request.block_extra_keys
            end = item.start_position + item.num_new_tokens
            first = 0 if self.window is None else max(0, item.start_position - self.window + 1)
            for p in range(first, end):
                got = self.slots[self._slot(item.block_ids, p)]
                want = (embedding(tokens, spans, p), p)
                assert got == want, f"{item.request_id} read {got} at position {p}, not {want}"
            if item.sample:
                sampled[item.request_id] = next_token(tokens[:end], spans)
        return sampled


def run(specs: list[Spec], config: SchedulerConfig) -> dict[str, Request]:
    scheduler = Scheduler(config)
    model = FakeModel(config.num_blocks, config.block_size, config.sliding_window)
    requests = [
        Request(
            f"r{i}",
            spec.prompt,
            spec.params,
            eos_token_id=EOS,
            arrival_time=float(spec.arrival_step),
            priority=spec.priority,
            block_extra_keys=spec.extra_keys,
        )
        for i, spec in enumerate(specs)
    ]
    pending = sorted(zip(specs, requests, strict=True), key=lambda pair: pair[0].arrival_step)
    for step in range(STEP_LIMIT):
        while pending and pending[0][0].arrival_step <= step:
            scheduler.add_request(pending.pop(0)[1])
        for spec, request in zip(specs, requests, strict=True):
            limit = spec.abort_after
            if limit is not None and not request.is_finished and request.num_output_tokens >= limit:
                scheduler.abort_requests([request.request_id])
        if not pending and not scheduler.has_unfinished_requests():
            break
        output = scheduler.schedule()
        assert output.num_batched_tokens <= config.max_num_batched_tokens
        assert len(output.scheduled) <= config.max_num_seqs
        assert not {i.request_id for i in output.scheduled} & set(output.preempted_ids)
        scheduler.update_from_output(output, model.step(output.scheduled))
        scheduler.check_consistency()
    else:
        raise AssertionError(f"not finished after {STEP_LIMIT} steps")
    manager: KVCacheManager = scheduler.kv_manager
    assert manager.num_free_blocks == config.num_blocks - 1
    manager.check_consistency()
    return {r.request_id: r for r in requests}


@st.composite
def workloads(draw):
    block_size = draw(st.sampled_from([1, 2, 4, 8]))
    needed = -(-MAX_MODEL_LEN // block_size)
    num_blocks = needed + 1 + draw(st.integers(0, 2 * needed))
    chunked = draw(st.booleans())
    budget = draw(st.integers(1, 64)) if chunked else draw(st.integers(MAX_MODEL_LEN, 80))
    window = draw(st.one_of(st.none(), st.integers(1, 12)))
    config = dict(
        max_num_seqs=draw(st.integers(1, 6)),
        max_num_batched_tokens=budget,
        max_model_len=MAX_MODEL_LEN,
        block_size=block_size,
        num_blocks=num_blocks,
        chunked_prefill=chunked,
        policy=draw(st.sampled_from(["fcfs", "priority"])),
        sliding_window=window,
    )
    prefixes = draw(
        st.lists(st.lists(st.integers(1, VOCAB - 1), max_size=20), min_size=1, max_size=3)
    )
    specs = []
    for _ in range(draw(st.integers(1, 8))):
        prompt = draw(st.sampled_from(prefixes)) + draw(
            st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=14)
        )
        extra = []
        if draw(st.booleans()):
            start = draw(st.integers(0, len(prompt) - 1))
            end = draw(st.integers(start + 1, len(prompt)))
            extra = [(start, end, draw(st.sampled_from(["img-a", "img-b"])))]
        params = Params(
            max_tokens=draw(st.one_of(st.none(), st.integers(1, 12))),
            min_tokens=draw(st.integers(0, 3)),
            stop_token_ids=draw(st.lists(st.integers(1, VOCAB - 1), max_size=2)),
            ignore_eos=draw(st.booleans()),
        )
        abort_after = draw(st.one_of(st.none(), st.none(), st.integers(0, 6)))
        specs.append(
            Spec(
                prompt, params, draw(st.integers(0, 3)), draw(st.integers(0, 8)), abort_after, extra
            )
        )
    return specs, config


@settings(max_examples=100, deadline=None, database=None)
@given(workloads())
def test_outputs_match_the_oracle_with_and_without_prefix_caching(workload):
    specs, config = workload
    expected = [expected_outputs(spec) for spec in specs]
    for caching in (True, False):
        done = run(specs, SchedulerConfig(enable_prefix_caching=caching, **config))
        got = [
            (done[f"r{i}"].output_token_ids, done[f"r{i}"].finish_reason) for i in range(len(specs))
        ]
        assert got == expected, f"prefix caching {caching}"


@settings(max_examples=60, deadline=None, database=None)
@given(workloads(), st.integers(0, 3))
def test_tight_pools_force_preemption_and_still_match(workload, spare):
    specs, config = workload
    config["num_blocks"] = -(-MAX_MODEL_LEN // config["block_size"]) + 1 + spare
    expected = [expected_outputs(spec) for spec in specs]
    for caching in (True, False):
        done = run(specs, SchedulerConfig(enable_prefix_caching=caching, **config))
        got = [
            (done[f"r{i}"].output_token_ids, done[f"r{i}"].finish_reason) for i in range(len(specs))
        ]
        assert got == expected, f"prefix caching {caching}"


def test_a_shared_prefix_workload_hits_and_preempts():
    """The property tests' machinery exercises what it claims to: hits and preemptions."""
    shared = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
    specs = [
        Spec([*shared, i, i + 1], Params(max_tokens=10, ignore_eos=True), 0, i % 3, None, [])
        for i in range(6)
    ]
    config = SchedulerConfig(
        max_model_len=MAX_MODEL_LEN, block_size=4, num_blocks=12, max_num_seqs=6
    )
    scheduler_hits = run(specs, config)
    assert all(r.num_cached_tokens >= 8 for r in list(scheduler_hits.values())[1:])
    assert any(r.num_preemptions for r in scheduler_hits.values())
    assert [r.output_token_ids for r in scheduler_hits.values()] == [
        expected_outputs(s)[0] for s in specs
    ]
