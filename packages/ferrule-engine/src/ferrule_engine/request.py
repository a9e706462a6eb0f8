"""A generation request and its life cycle.

A :class:`Request` is one sequence the scheduler drives from its prompt to a finish. Its
:class:`RequestStatus` moves through a small state machine, and every move is checked::

    WAITING ──► RUNNING ──► PREEMPTED ──► RUNNING ──► ...
       │           │            │
       └───────────┴────────────┴──► FINISHED_STOPPED | FINISHED_LENGTH
                                     | FINISHED_ABORTED | FINISHED_ERROR

A finished request never moves again; any other move raises :class:`InvalidTransition`
naming both states. Setting ``request.status`` performs the check.

Token bookkeeping: ``all_token_ids`` is the prompt followed by the outputs so far.
``num_computed_tokens`` counts the leading tokens whose K/V is in the cache or is being
written by the step just scheduled (the scheduler advances it when it schedules, not when the
step ends). A preempted request drops its blocks and restarts from ``num_computed_tokens = 0``
with its outputs kept: the prompt and the outputs are prefilled again (recompute).

``block_hashes`` caches the chained hashes of the request's full blocks for prefix caching
(see :mod:`ferrule_engine.kv_cache.hashing`); tokens are only ever appended, so hashes once
computed stay valid, also across preemptions, and the list is extended lazily.

Decisions the design left open:

- ``sampling_params`` is any object with ``max_tokens`` (int, or None for "up to
  max_model_len"), ``min_tokens``, ``stop_token_ids``, ``ignore_eos`` and ``n``.
- ``arrival_seq`` breaks ties between equal arrival times; the scheduler sets it on
  :meth:`~ferrule_engine.scheduler.Scheduler.add_request` (order of admission to the engine).
- ``block_extra_keys`` spans must lie in the prompt: ``0 <= start < end <= len(prompt)``.
"""

from __future__ import annotations

import enum
import time
from typing import Any

from ferrule_core.errors import FerruleError


class InvalidTransition(FerruleError, RuntimeError):
    """A request was asked to move between two states the state machine does not connect."""


class RequestStatus(enum.Enum):
    """Where a request is in its life cycle."""

    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"
    FINISHED_ERROR = "finished_error"

    @property
    def is_finished(self) -> bool:
        return self in _FINISH_REASONS

    @property
    def finish_reason(self) -> str | None:
        """``"stop"``, ``"length"``, ``"abort"``, ``"error"``, or None while unfinished."""
        return _FINISH_REASONS.get(self)

    def can_become(self, new: RequestStatus) -> bool:
        """Whether the state machine allows the move ``self -> new``."""
        if self.is_finished:
            return False
        if new.is_finished:
            return True
        return (self, new) in _MOVES


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}
_MOVES = {
    (RequestStatus.WAITING, RequestStatus.RUNNING),
    (RequestStatus.RUNNING, RequestStatus.PREEMPTED),
    (RequestStatus.PREEMPTED, RequestStatus.RUNNING),
}


class Request:
    """One sequence to generate: its prompt, outputs, limits and scheduling state."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: Any,
        eos_token_id: int | None = None,
        arrival_time: float | None = None,
        priority: int = 0,
        block_extra_keys: list[tuple[int, int, object]] | None = None,
        max_model_len: int | None = None,
    ) -> None:
        if not prompt_token_ids:
            raise ValueError(f"request {request_id!r}: the prompt is empty; give at least 1 token")
        spans = sorted(block_extra_keys or [], key=lambda span: (span[0], span[1]))
        for start, end, _key in spans:
            if not 0 <= start < end <= len(prompt_token_ids):
                raise ValueError(
                    f"request {request_id!r}: block_extra_keys span [{start}, {end}) must satisfy "
                    f"0 <= start < end <= {len(prompt_token_ids)} (the prompt length)"
                )
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_id = eos_token_id
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.arrival_seq = 0
        self.priority = priority
        self.block_extra_keys = spans
        self.max_model_len = max_model_len

        self.output_token_ids: list[int] = []
        self._all_token_ids = list(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1
        self._status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.num_preemptions = 0
        self.first_scheduled_time: float | None = None
        self.block_hashes: list[bytes] = []

    # --- state ----------------------------------------------------------------------

    @property
    def status(self) -> RequestStatus:
        return self._status

    @status.setter
    def status(self, new: RequestStatus) -> None:
        if not self._status.can_become(new):
            raise InvalidTransition(
                f"request {self.request_id!r} cannot move from {self._status.name} to {new.name}; "
                "allowed: WAITING->RUNNING, RUNNING->PREEMPTED, PREEMPTED->RUNNING, and any "
                "unfinished state -> FINISHED_*"
            )
        self._status = new

    @property
    def is_finished(self) -> bool:
        return self._status.is_finished

    @property
    def finish_reason(self) -> str | None:
        return self._status.finish_reason

    # --- tokens ---------------------------------------------------------------------

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt + outputs (a live list: do not modify it)."""
        return self._all_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self._all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self._all_token_ids.append(token_id)

    def check_stop(self, max_model_len: int) -> RequestStatus | None:
        """The finished status the last appended output token calls for, or None.

        In order: a ``stop_token_ids`` token (``stop_reason`` = the token) or EOS unless
        ``ignore_eos`` (``stop_reason`` stays None, as vLLM) -> FINISHED_STOPPED, only once
        ``min_tokens`` outputs exist (as vLLM; the model runner also masks stop tokens out of
        the first ``min_tokens`` draws, so they never appear there); ``max_tokens``
        outputs -> FINISHED_LENGTH; ``max_model_len`` tokens in all -> FINISHED_LENGTH.
        """
        params = self.sampling_params
        token = self.output_token_ids[-1]
        if self.num_output_tokens >= params.min_tokens:
            if token in (params.stop_token_ids or ()):
                self.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
            eos = self.eos_token_id
            if eos is not None and token == eos and not params.ignore_eos:
                return RequestStatus.FINISHED_STOPPED
        if params.max_tokens is not None and self.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if self.num_tokens >= max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self._status.name}, "
            f"tokens={self.num_prompt_tokens}+{self.num_output_tokens}, "
            f"computed={self.num_computed_tokens})"
        )
