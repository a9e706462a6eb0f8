"""What the engine hands back: one :class:`RequestOutput` per request, holding one
:class:`CompletionOutput` per sample (``n``), with timings in :class:`RequestMetrics`.

The field names follow vLLM's, so code written against ``vllm.LLM`` reads these unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CompletionOutput:
    """One generated sequence.

    ``logprobs`` holds, per generated token, a mapping from token id to log-probability: the
    sampled token and the top ``SamplingParams.logprobs`` alternatives (``None`` when not
    asked). ``finish_reason`` is ``"stop"``, ``"length"``, ``"abort"``, ``"error"`` or ``None``
    while running; ``stop_reason`` the stop string or token id that ended it, if any.
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Wall-clock times (``time.monotonic()``) of one request's life.

    ``first_token_time - arrival_time`` is the time to first token; ``num_cached_tokens``
    the prompt tokens served from the prefix cache instead of being computed.
    """

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0
    num_preemptions: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time


@dataclass
class RequestOutput:
    """The state of one request: its prompt and its ``n`` completions so far."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    metrics: RequestMetrics | None = None
