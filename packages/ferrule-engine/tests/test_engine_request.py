"""The request state machine and the token-based stop rules."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from ferrule_engine.request import InvalidTransition, Request, RequestStatus

S = RequestStatus
FINISHED = [S.FINISHED_STOPPED, S.FINISHED_LENGTH, S.FINISHED_ABORTED, S.FINISHED_ERROR]
ALLOWED = {(S.WAITING, S.RUNNING), (S.RUNNING, S.PREEMPTED), (S.PREEMPTED, S.RUNNING)} | {
    (a, b) for a in (S.WAITING, S.RUNNING, S.PREEMPTED) for b in FINISHED
}


@dataclass
class Params:
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1


def _request_in(status: RequestStatus) -> Request:
    """A request driven to ``status`` through allowed moves only."""
    request = Request("r", [1, 2, 3], Params())
    path = {
        S.WAITING: [],
        S.RUNNING: [S.RUNNING],
        S.PREEMPTED: [S.RUNNING, S.PREEMPTED],
    }.get(status, [S.RUNNING, status])
    for step in path:
        request.status = step
    assert request.status is status
    return request


@pytest.mark.parametrize("old,new", list(itertools.product(S, S)))
def test_every_transition_is_allowed_or_raises_naming_both_states(old, new):
    request = _request_in(old)
    if (old, new) in ALLOWED:
        request.status = new
        assert request.status is new
    else:
        with pytest.raises(InvalidTransition, match=f"from {old.name} to {new.name}"):
            request.status = new
        assert request.status is old  # a refused move changes nothing


def test_finish_reasons_and_is_finished():
    reasons = {s: s.finish_reason for s in S}
    assert reasons == {
        S.WAITING: None,
        S.RUNNING: None,
        S.PREEMPTED: None,
        S.FINISHED_STOPPED: "stop",
        S.FINISHED_LENGTH: "length",
        S.FINISHED_ABORTED: "abort",
        S.FINISHED_ERROR: "error",
    }
    assert [s for s in S if s.is_finished] == FINISHED
    request = _request_in(S.FINISHED_LENGTH)
    assert request.is_finished and request.finish_reason == "length"


def test_token_bookkeeping():
    request = Request("r", [5, 6, 7], Params(), arrival_time=3.0)
    assert request.num_cached_tokens == -1 and request.num_computed_tokens == 0
    request.append_output_token(8)
    request.append_output_token(9)
    assert request.all_token_ids == [5, 6, 7, 8, 9]
    assert (request.num_tokens, request.num_prompt_tokens, request.num_output_tokens) == (5, 3, 2)
    assert request.output_token_ids == [8, 9] and request.prompt_token_ids == [5, 6, 7]
    assert request.arrival_time == 3.0


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="prompt is empty"):
        Request("r", [], Params())
    with pytest.raises(ValueError, match=r"span \[2, 5\).*<= 3"):
        Request("r", [1, 2, 3], Params(), block_extra_keys=[(2, 5, "img")])


def _stop_after(tokens, params, eos=None, max_model_len=100):
    """Append tokens one at a time; return (status, number appended, stop_reason)."""
    request = Request("r", [1, 2], params, eos_token_id=eos)
    for token in tokens:
        request.append_output_token(token)
        status = request.check_stop(max_model_len)
        if status is not None:
            return status, request.num_output_tokens, request.stop_reason
    return None, request.num_output_tokens, request.stop_reason


def test_eos_stops_with_no_stop_reason():
    assert _stop_after([3, 4, 0, 5], Params(), eos=0) == (S.FINISHED_STOPPED, 3, None)


def test_ignore_eos_runs_on_to_max_tokens():
    assert _stop_after([0] * 10, Params(max_tokens=4, ignore_eos=True), eos=0) == (
        S.FINISHED_LENGTH,
        4,
        None,
    )


def test_stop_token_ids_stop_with_the_token_as_reason_even_with_ignore_eos():
    params = Params(stop_token_ids=[7, 9], ignore_eos=True)
    assert _stop_after([3, 9, 5], params, eos=0) == (S.FINISHED_STOPPED, 2, 9)


def test_min_tokens_holds_back_stop_tokens_but_not_length():
    params = Params(min_tokens=2, stop_token_ids=[7])
    # output 1 cannot stop; from the second on (min_tokens outputs exist) one can, as in vLLM
    assert _stop_after([7, 7, 0], params, eos=0) == (S.FINISHED_STOPPED, 2, 7)
    assert _stop_after([0, 0, 0], Params(min_tokens=2), eos=0) == (S.FINISHED_STOPPED, 2, None)
    assert _stop_after([7, 0, 7], Params(min_tokens=3, stop_token_ids=[7]), eos=9) == (
        S.FINISHED_STOPPED,
        3,
        7,
    )
    assert _stop_after([0] * 5, Params(min_tokens=5, max_tokens=2), eos=0)[:2] == (
        S.FINISHED_LENGTH,
        2,
    )


def test_stop_token_wins_over_length_on_the_same_token():
    assert _stop_after([3, 7], Params(max_tokens=2, stop_token_ids=[7]))[0] is S.FINISHED_STOPPED


def test_max_tokens_none_stops_at_max_model_len():
    # prompt of 2 + 6 outputs = 8 tokens = max_model_len
    assert _stop_after([3] * 20, Params(max_tokens=None), max_model_len=8)[:2] == (
        S.FINISHED_LENGTH,
        6,
    )
