"""The scheduler: budget, chunked prefill, seats, preemption, policies, aborts, stops."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from ferrule_core import ConfigError, load_plugins
from ferrule_engine.config import SchedulerConfig
from ferrule_engine.policies import FcfsPolicy, PriorityPolicy
from ferrule_engine.request import Request, RequestStatus
from ferrule_engine.scheduler import Scheduler

S = RequestStatus
BS = 4


@dataclass
class Params:
    max_tokens: int | None = 4
    min_tokens: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1


def _sched(policy_object=None, **overrides):
    settings = dict(
        max_num_seqs=8,
        max_num_batched_tokens=64,
        max_model_len=32,
        block_size=BS,
        num_blocks=32,
    )
    settings.update(overrides)
    return Scheduler(SchedulerConfig(**settings), policy_object)


def _req(rid, prompt_len, max_tokens=4, *, first=0, arrival=0.0, **kwargs):
    tokens = [first + i + 100 for i in range(prompt_len)]
    return Request(rid, tokens, Params(max_tokens=max_tokens), arrival_time=arrival, **kwargs)


def _token(request):
    """A deterministic next token: a function of the history only."""
    return 10 + sum((i + 1) * t for i, t in enumerate(request.all_token_ids)) % 50


def _step(scheduler):
    out = scheduler.schedule()
    sampled = {item.request_id: _token(item.request) for item in out.scheduled if item.sample}
    finished = scheduler.update_from_output(out, sampled)
    scheduler.check_consistency()
    return out, finished


def _plan(out):
    return [(i.request_id, i.start_position, i.num_new_tokens, i.sample) for i in out.scheduled]


def _run(scheduler, limit=500):
    done = {}
    for _ in range(limit):
        if not scheduler.has_unfinished_requests():
            return done
        _, finished = _step(scheduler)
        done.update({r.request_id: r for r in finished})
    raise AssertionError("requests did not finish")


def _alone(request_len, max_tokens, **kwargs):
    """The outputs of one request run alone in a large pool: the oracle."""
    scheduler = _sched()
    scheduler.add_request(_req("x", request_len, max_tokens, **kwargs))
    return _run(scheduler)["x"].output_token_ids


def test_budget_splits_a_prompt_into_chunks():
    scheduler = _sched(max_num_batched_tokens=10)
    scheduler.add_request(_req("a", 7))
    scheduler.add_request(_req("b", 6, first=50))
    out, _ = _step(scheduler)
    assert _plan(out) == [("a", 0, 7, True), ("b", 0, 3, False)]
    assert out.num_batched_tokens == 10
    assert out.scheduled[0].block_ids == [1, 2] and out.scheduled[1].block_ids == [3]
    out, _ = _step(scheduler)
    assert _plan(out) == [("a", 7, 1, True), ("b", 3, 3, True)]
    assert scheduler.get_request("b").num_output_tokens == 1


def test_without_chunked_prefill_a_prompt_waits_for_room():
    scheduler = _sched(max_num_batched_tokens=32, chunked_prefill=False)
    for rid, n, first in (("a", 20, 0), ("b", 13, 50)):
        scheduler.add_request(_req(rid, n, first=first))
    out, _ = _step(scheduler)
    assert _plan(out) == [("a", 0, 20, True)]
    out, _ = _step(scheduler)
    assert _plan(out) == [("a", 20, 1, True), ("b", 0, 13, True)]


def test_max_num_seqs_limits_running_requests():
    scheduler = _sched(max_num_seqs=2)
    for rid in "abc":
        scheduler.add_request(_req(rid, 3, max_tokens=2))
    out, _ = _step(scheduler)
    assert [i.request_id for i in out.scheduled] == ["a", "b"] and scheduler.num_waiting == 1
    out, finished = _step(scheduler)
    assert {r.request_id for r in finished} == {"a", "b"}
    out, _ = _step(scheduler)
    assert _plan(out) == [("c", 0, 3, True)]


def test_prefix_hit_skips_cached_tokens():
    scheduler = _sched()
    scheduler.add_request(_req("a", 10))
    _step(scheduler)
    scheduler.add_request(_req("b", 10))
    out, _ = _step(scheduler)
    assert _plan(out) == [("a", 10, 1, True), ("b", 8, 2, True)]
    assert scheduler.get_request("b").num_cached_tokens == 8
    assert out.scheduled[1].block_ids[:2] == out.scheduled[0].block_ids[:2]
    # two equal prompts in one step: the second hits what the first computes in that step
    scheduler.add_request(_req("c", 10, first=7))
    scheduler.add_request(_req("d", 10, first=7))
    out, _ = _step(scheduler)
    assert _plan(out)[-2:] == [("c", 0, 10, True), ("d", 8, 2, True)]


def test_imported_kv_is_not_computed_again():
    scheduler = _sched()
    request = _req("d", 10)
    request.append_output_token(33)  # the prefill instance sampled the first token
    scheduler.add_request(request)
    assert len(scheduler.kv_manager.import_blocks(request, 10)) == 3
    out, _ = _step(scheduler)
    assert _plan(out) == [("d", 10, 1, True)] and request.num_cached_tokens == 10


def test_preemption_by_recompute_keeps_outputs_and_finishes_like_alone():
    # 4 usable blocks: a and b take 2 each; a then needs a third and b is preempted
    scheduler = _sched(num_blocks=5, max_model_len=16)
    scheduler.add_request(_req("a", 7, max_tokens=5))
    scheduler.add_request(_req("b", 7, max_tokens=5, first=50))
    _step(scheduler)
    _step(scheduler)
    b = scheduler.get_request("b")
    outputs_before = list(b.output_token_ids)
    assert len(outputs_before) == 2
    out, _ = _step(scheduler)
    assert out.preempted_ids == ["b"] and [i.request_id for i in out.scheduled] == ["a"]
    assert b.status is S.PREEMPTED and b.num_computed_tokens == 0 and b.num_preemptions == 1
    assert b.output_token_ids == outputs_before and scheduler.num_preemptions == 1
    assert scheduler.kv_manager.block_ids("b") == []
    done = _run(scheduler)
    assert done["b"].output_token_ids == _alone(7, 5, first=50)
    assert done["a"].output_token_ids == _alone(7, 5)
    assert scheduler.kv_manager.num_free_blocks == 4


def test_a_request_preempted_in_a_step_is_not_readmitted_in_it():
    # V trails R by one step on the same history: it shares R's blocks where it hit them and
    # holds private copies of the rest. When R runs out of blocks, V is preempted; V could be
    # readmitted at once (R's blocks cover it), but admission pauses for the step.
    scheduler = _sched(num_blocks=11, max_model_len=40)
    scheduler.add_request(_req("A", 9, max_tokens=20, first=200))
    scheduler.add_request(_req("R", 10, max_tokens=20))
    _step(scheduler)
    scheduler.add_request(_req("V", 10, max_tokens=20))
    for _ in range(10):
        out, _ = _step(scheduler)
        if out.preempted_ids:
            break
    assert out.preempted_ids == ["V"] and "V" not in [i.request_id for i in out.scheduled]
    done = _run(scheduler)
    assert done["V"].output_token_ids == done["R"].output_token_ids == _alone(10, 20)


def test_a_request_with_no_victim_preempts_itself():
    scheduler = _sched(num_blocks=5, max_model_len=16)
    scheduler.add_request(_req("a", 6, max_tokens=6))
    scheduler.add_request(_req("b", 8, max_tokens=3, first=50))
    _step(scheduler)  # a: 2 blocks, b: 2 full blocks
    out, _ = _step(scheduler)  # b's token 9 needs a fifth block; a is already scheduled
    assert out.preempted_ids == ["b"] and _plan(out) == [("a", 6, 1, True)]
    done = _run(scheduler)
    assert done["b"].output_token_ids == _alone(8, 3, first=50)


def test_priority_orders_and_preempts_the_lowest_priority():
    scheduler = _sched(PriorityPolicy(), max_num_seqs=1)
    for rid, prio in (("low", 5), ("high", 0), ("mid", 2)):
        scheduler.add_request(_req(rid, 3, max_tokens=1, priority=prio))
    order = [_step(scheduler)[1][0].request_id for _ in range(3)]
    assert order == ["high", "mid", "low"]
    # no free seat: a better newcomer takes the seat of the running request
    scheduler.add_request(_req("slow", 3, max_tokens=5, priority=4))
    _step(scheduler)
    scheduler.add_request(_req("urgent", 3, max_tokens=1, priority=1, first=9))
    out, finished = _step(scheduler)
    assert out.preempted_ids == ["slow"] and [r.request_id for r in finished] == ["urgent"]
    assert _run(scheduler)["slow"].output_token_ids == _alone(3, 5)


def test_priority_preempts_lower_priority_running_request_when_blocks_run_out():
    scheduler = _sched(PriorityPolicy(), num_blocks=5, max_model_len=16)
    scheduler.add_request(_req("old-low", 7, max_tokens=5, priority=3))
    scheduler.add_request(_req("new-high", 7, max_tokens=5, priority=1, first=50, arrival=1.0))
    _step(scheduler)
    _step(scheduler)
    out, _ = _step(scheduler)  # both need a third block: the low one goes, though older
    assert out.preempted_ids == ["old-low"]
    _run(scheduler)


def test_priority_preempts_running_lower_priority_for_a_waiting_one():
    scheduler = _sched(PriorityPolicy(), num_blocks=5, max_model_len=16)
    scheduler.add_request(_req("low", 14, max_tokens=2, priority=5))
    _step(scheduler)  # low holds 4 blocks
    scheduler.add_request(_req("high", 6, max_tokens=2, priority=0, first=50))
    out, _ = _step(scheduler)
    assert out.preempted_ids == ["low"] and _plan(out) == [("high", 0, 6, True)]
    fcfs = _sched(num_blocks=5, max_model_len=16)
    fcfs.add_request(_req("low", 14, max_tokens=2, priority=5))
    _step(fcfs)
    fcfs.add_request(_req("high", 6, max_tokens=2, priority=0, first=50))
    out, _ = _step(fcfs)
    assert out.preempted_ids == [] and _plan(out) == [("low", 14, 1, True)]
    done = _run(scheduler)
    assert done["low"].output_token_ids == _alone(14, 2)


def test_abort_in_every_state_frees_blocks():
    scheduler = _sched(num_blocks=5, max_model_len=16, max_num_batched_tokens=8)
    scheduler.add_request(_req("prefill", 12))  # chunked: 8 then 4
    scheduler.add_request(_req("waiting", 3))
    _step(scheduler)
    assert scheduler.get_request("prefill").num_computed_tokens == 8
    scheduler.abort_requests(["prefill", "waiting", "unknown"])
    assert scheduler.kv_manager.num_free_blocks == 4 and not scheduler.has_unfinished_requests()
    out = scheduler.schedule()
    assert out.finished_ids == ["prefill", "waiting"] and out.scheduled == []
    assert scheduler.get_request("prefill") is None

    # running (decoding) and preempted
    scheduler.add_request(_req("a", 7, max_tokens=8))
    scheduler.add_request(_req("b", 7, max_tokens=8, first=50))
    for _ in range(3):
        _step(scheduler)
    b = next(r for r in scheduler.waiting if r.request_id == "b")
    assert b.status is S.PREEMPTED
    scheduler.abort_requests("b")
    assert b.status is S.FINISHED_ABORTED
    out = scheduler.schedule()  # a runs; abort it while its step is in flight
    assert out.finished_ids == ["b"]
    scheduler.abort_requests(["a"])
    assert scheduler.update_from_output(out, {"a": 7}) == []
    assert scheduler.kv_manager.num_free_blocks == 4
    scheduler.check_consistency()


def test_finish_requests_for_stop_strings():
    scheduler = _sched()
    scheduler.add_request(_req("a", 5))
    _step(scheduler)
    a = scheduler.get_request("a")
    scheduler.finish_requests(["a"], S.FINISHED_STOPPED)
    assert a.status is S.FINISHED_STOPPED and a.finish_reason == "stop"
    assert scheduler.kv_manager.num_free_blocks == 31
    with pytest.raises(ValueError, match="RUNNING is not a FINISHED"):
        scheduler.finish_requests(["a"], S.RUNNING)


def test_stops_through_the_scheduler():
    scheduler = _sched(max_model_len=12)
    eos = _token(_req("e", 3))  # the first token the fake model gives this prompt
    scheduler.add_request(_req("e", 3, max_tokens=5, eos_token_id=eos))
    scheduler.add_request(_req("long", 9, max_tokens=None))  # max_model_len 12: 3 tokens
    scheduler.add_request(_req("own", 4, max_tokens=None, max_model_len=6))
    done = _run(scheduler)
    assert done["e"].status is S.FINISHED_STOPPED and done["e"].output_token_ids == [eos]
    assert done["long"].status is S.FINISHED_LENGTH and done["long"].num_output_tokens == 3
    assert done["own"].num_tokens == 6 and done["own"].finish_reason == "length"
    assert scheduler.kv_manager.num_free_blocks == 31


def test_add_request_refuses_duplicates_and_overlong_prompts():
    scheduler = _sched(max_model_len=8)
    scheduler.add_request(_req("a", 3))
    with pytest.raises(ValueError, match="already scheduled"):
        scheduler.add_request(_req("a", 3))
    with pytest.raises(ValueError, match="more than max_model_len=8"):
        scheduler.add_request(_req("b", 9))
    with pytest.raises(ValueError, match="sampled` lacks"):
        scheduler.update_from_output(scheduler.schedule(), {})


def test_config_validation_names_the_problem():
    with pytest.raises(ConfigError, match="needs 3; give num_blocks >= 4"):
        SchedulerConfig(max_model_len=12, block_size=4, num_blocks=3)
    with pytest.raises(ConfigError, match="without chunked prefill"):
        SchedulerConfig(
            max_model_len=64, num_blocks=8, max_num_batched_tokens=32, chunked_prefill=False
        )
    with pytest.raises(ConfigError, match="max_num_seqs=0"):
        SchedulerConfig(max_model_len=16, num_blocks=8, max_num_seqs=0)
    with pytest.raises(ValueError, match="'lottery' is not built in"):
        Scheduler(SchedulerConfig(max_model_len=16, num_blocks=8, policy="lottery"))
    assert isinstance(_sched(policy="priority").policy, PriorityPolicy)


def test_builtin_policies_are_registered_through_the_entry_point():
    registry = load_plugins(allow=["engine"])
    fcfs, priority = registry.scheduler("fcfs"), registry.scheduler("priority")
    assert fcfs.policy is FcfsPolicy and not fcfs.preemptive and fcfs.plugin == "engine"
    assert priority.policy is PriorityPolicy and priority.preemptive
    code = "import sys, ferrule_engine.plugin; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
