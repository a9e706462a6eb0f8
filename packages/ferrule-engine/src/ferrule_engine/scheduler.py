"""The continuous-batching scheduler: which tokens of which requests run in the next step.

Two queues, each kept sorted by the policy's ``key`` (lower first): ``running`` (requests
holding KV blocks) and ``waiting`` (new and preempted requests). One :meth:`Scheduler.schedule`
call spends a budget of ``max_num_batched_tokens`` tokens:

0. Preemptive policies only (``priority``): while the best waiting request sorts before the
   worst running one and could not be admitted (no free seat or not enough free blocks for
   its first chunk), preempt that running request.
1. Running requests, in policy order, get ``min(tokens not yet computed, budget)`` tokens: 1
   for a decode, a chunk for a prefill in progress. When the KV cache cannot hold them,
   running requests not yet scheduled in this step are preempted from the lowest end of the
   order until it can; if none is left, the request itself is preempted.
2. Waiting requests are admitted in policy order while a seat (``max_num_seqs``) and budget
   remain: prefix hit, then the rest of the prompt, or with chunked prefill what the budget
   allows (without it, a prompt that does not fit waits). Admission stops at the first request
   that cannot get its blocks (nobody skips ahead) or that was preempted in this step.

Preemption is by recompute: the request's blocks are freed, ``num_computed_tokens`` returns to
0 and its outputs are kept, so when readmitted it prefills prompt + outputs again (its own old
blocks may still be hit in the prefix cache).

``num_computed_tokens`` advances when a request is scheduled. ``ScheduledRequest.sample`` is
True when the step computes a request's last known token, so the model samples the next one;
:meth:`Scheduler.update_from_output` appends it and applies the token-based stops of
:meth:`Request.check_stop <ferrule_engine.request.Request.check_stop>` (stop token ids, EOS,
min_tokens, max_tokens, max_model_len: the request's own limit if lower than the config's).

Finished requests free their blocks and are forgotten (``get_request`` returns None). A step's
``finished_ids`` are those finished by :meth:`abort_requests` / :meth:`finish_requests` since
the previous step (``update_from_output`` returns the ones it finishes).
"""

from __future__ import annotations

import time
from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ferrule_engine.config import SchedulerConfig
from ferrule_engine.kv_cache.manager import KVCacheManager
from ferrule_engine.policies import BUILTIN_POLICIES
from ferrule_engine.request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    """One request's share of a step: ``num_new_tokens`` tokens from ``start_position``."""

    request: Request
    num_new_tokens: int
    start_position: int  # its num_computed_tokens (prefix hit included) before this step
    block_ids: list[int]  # the full block table after allocation
    sample: bool  # the step reaches the request's last token: sample the next one

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclass
class SchedulerOutput:
    """What one step computes, plus what changed in the queues."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    num_batched_tokens: int = 0
    preempted_ids: list[str] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)


class Scheduler:
    """Continuous batching under a token budget, with prefix caching and preemption."""

    def __init__(self, config: SchedulerConfig, policy: Any = None) -> None:
        if policy is None:
            if config.policy not in BUILTIN_POLICIES:
                raise ValueError(
                    f"policy={config.policy!r} is not built in ({', '.join(BUILTIN_POLICIES)}); "
                    "pass the policy object, e.g. registry.scheduler(name).policy()"
                )
            policy = BUILTIN_POLICIES[config.policy]()
        self.config = config
        self.policy = policy
        self.kv_manager = KVCacheManager(
            config.num_blocks,
            config.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
            sliding_window=config.sliding_window,
        )
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0
        self._requests: dict[str, Request] = {}
        self._finished_ids: list[str] = []
        self._num_arrivals = 0

    # --- requests -------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        rid = request.request_id
        if rid in self._requests:
            raise ValueError(f"request_id {rid!r} is already scheduled; give a new one")
        if request.status is not RequestStatus.WAITING:
            raise ValueError(
                f"request {rid!r} is {request.status.name}; only WAITING ones are added"
            )
        if request.num_tokens > self._max_len(request):
            raise ValueError(
                f"request {rid!r} has {request.num_tokens} tokens, more than max_model_len="
                f"{self._max_len(request)}; shorten the prompt"
            )
        self._num_arrivals += 1
        request.arrival_seq = self._num_arrivals
        self._requests[rid] = request
        insort(self.waiting, request, key=self.policy.key)

    def get_request(self, request_id: str) -> Request | None:
        """The unfinished request with this id, or None."""
        return self._requests.get(request_id)

    def abort_requests(self, request_ids: str | Iterable[str]) -> None:
        """Finish requests as FINISHED_ABORTED wherever they are; unknown ids are ignored."""
        self.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def finish_requests(self, request_ids: str | Iterable[str], status: RequestStatus) -> None:
        """Finish requests with ``status`` (e.g. a stop string matched); frees their blocks."""
        if not status.is_finished:
            raise ValueError(f"status={status.name} is not a FINISHED_* status")
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        for rid in ids:
            request = self._requests.get(rid)
            if request is not None:
                self._finish(request, status)
                self._finished_ids.append(rid)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # --- one step -------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's tokens (phases 0-2 of the module docstring)."""
        out = SchedulerOutput(finished_ids=self._finished_ids)
        self._finished_ids = []
        budget = self.config.max_num_batched_tokens
        if self.policy.preemptive:
            self._preempt_for_waiting(out)
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:  # preempted as a victim just now
                continue
            count = min(request.num_tokens - request.num_computed_tokens, budget)
            if count <= 0:
                raise RuntimeError(f"{request!r} has nothing to compute: was its token lost?")
            if self._allocate_running(request, count, out):
                budget -= self._add(out, request, count)
        preempted = set(out.preempted_ids)
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            if request.request_id in preempted:
                break  # blocks are short: readmitting it at once would only thrash
            count = self._admit(request, budget)
            if count is None:
                break
            budget -= self._add(out, request, count)
        return out

    def update_from_output(self, output: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Append each sampled token, apply the stops; return the requests that finished."""
        finished = []
        for item in output.scheduled:
            request = item.request
            if not item.sample or request.status is not RequestStatus.RUNNING:
                continue
            if request.request_id not in sampled:
                raise ValueError(f"{request!r} was scheduled to sample; `sampled` lacks its token")
            request.append_output_token(sampled[request.request_id])
            status = request.check_stop(self._max_len(request))
            if status is not None:
                self._finish(request, status)
                finished.append(request)
        return finished

    def check_consistency(self) -> None:
        """Raise RuntimeError if the queues, the requests and the KV cache disagree (tests)."""
        self.kv_manager.check_consistency()
        queued = self.running + self.waiting
        if sorted(r.request_id for r in queued) != sorted(self._requests):
            raise RuntimeError("the queues and the request table disagree")
        for name, queue in (("running", self.running), ("waiting", self.waiting)):
            keys = [self.policy.key(r) for r in queue]
            if keys != sorted(keys):
                raise RuntimeError(f"the {name} queue is out of policy order")
        for r in self.running:
            held = len(self.kv_manager.block_ids(r.request_id)) * self.config.block_size
            if r.status is not RequestStatus.RUNNING or held < r.num_computed_tokens:
                raise RuntimeError(f"{r!r} holds {held} token slots while running")
        for r in self.waiting:
            if r.status.is_finished or r.status is RequestStatus.RUNNING:
                raise RuntimeError(f"{r!r} is waiting")
        holders = sum(self.kv_manager.has_blocks(r.request_id) for r in queued)
        if holders != self.kv_manager.num_requests or len(self.running) > self.config.max_num_seqs:
            raise RuntimeError("a finished request kept blocks, or too many requests run")

    # --- internals ------------------------------------------------------------------

    def _allocate_running(self, request: Request, count: int, out: SchedulerOutput) -> bool:
        """Allocate for a running request, preempting from the lowest end; False if it was."""
        if self.kv_manager.allocate_slots(request, count) is not None:
            return True
        scheduled = {item.request_id for item in out.scheduled}  # only when preempting
        while self.kv_manager.allocate_slots(request, count) is None:
            others = (r for r in reversed(self.running) if r.request_id not in scheduled)
            victim = next((r for r in others if r is not request), request)
            self._preempt(victim, out)
            if victim is request:
                return False
        return True

    def _first_chunk(self, request: Request, budget: int) -> tuple[list[Any], int, int] | None:
        """A waiting request's prefix hit (blocks, tokens) and first chunk; None: too long."""
        hits, num_hit = [], 0
        if not self.kv_manager.has_blocks(request.request_id):  # imported KV: no lookup
            hits, num_hit = self.kv_manager.get_computed_blocks(request)
        count = request.num_tokens - request.num_computed_tokens - num_hit
        if count > budget and not self.config.chunked_prefill:
            return None
        return hits, num_hit, min(count, budget)

    def _admit(self, request: Request, budget: int) -> int | None:
        """Move the waiting head to running with its first chunk; None if it must wait."""
        chunk = self._first_chunk(request, budget)
        if chunk is None:
            return None
        hits, num_hit, count = chunk
        if self.kv_manager.allocate_slots(request, count, hits, num_hit) is None:
            return None
        self.waiting.pop(0)
        request.num_computed_tokens += num_hit
        if request.num_cached_tokens < 0:
            request.num_cached_tokens = request.num_computed_tokens
        if request.first_scheduled_time is None:
            request.first_scheduled_time = time.monotonic()
        request.status = RequestStatus.RUNNING
        insort(self.running, request, key=self.policy.key)
        return count

    def _add(self, out: SchedulerOutput, request: Request, count: int) -> int:
        start = request.num_computed_tokens
        request.num_computed_tokens += count
        sample = request.num_computed_tokens == request.num_tokens
        block_ids = self.kv_manager.block_ids(request.request_id)
        out.scheduled.append(ScheduledRequest(request, count, start, block_ids, sample))
        out.num_batched_tokens += count
        return count

    def _preempt_for_waiting(self, out: SchedulerOutput) -> None:
        """Phase 0 of preemptive policies: make room for a better waiting request."""
        key = self.policy.key
        while self.waiting and self.running and key(self.waiting[0]) < key(self.running[-1]):
            best = self.waiting[0]
            if len(self.running) < self.config.max_num_seqs:
                chunk = self._first_chunk(best, self.config.max_num_batched_tokens)
                if chunk is not None:
                    hits, num_hit, count = chunk
                    if self.kv_manager.can_allocate(best, count, hits, num_hit):
                        return
            self._preempt(self.running[-1], out)

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.kv_manager.free(request)
        self.running.remove(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        insort(self.waiting, request, key=self.policy.key)
        out.preempted_ids.append(request.request_id)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        self.kv_manager.free(request)
        for queue in (self.running, self.waiting):
            if request in queue:
                queue.remove(request)
        del self._requests[request.request_id]

    def _max_len(self, request: Request) -> int:
        own = request.max_model_len
        return self.config.max_model_len if own is None else min(own, self.config.max_model_len)
