"""From sampled tokens to :class:`RequestOutput`: detokenization, stop strings, logprobs,
timings, and the gathering of ``n`` child requests into one output.

Token-based stops (EOS, stop token ids, lengths) are the scheduler's; stop strings need the
text, so they are found here and reported back to the engine, which finishes those requests.
The token that ended a request by a stop token id (or end of text) stays in ``token_ids``
but adds no text, unless ``include_stop_str_in_output`` is set (as in vLLM).

Each :class:`RequestOutput` is a snapshot: its lists and metrics are copies, so a consumer on
another thread (the async front end) never sees them change under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ferrule_engine.detokenizer import IncrementalDetokenizer
from ferrule_engine.outputs import CompletionOutput, RequestMetrics, RequestOutput


@dataclass
class _Sequence:
    index: int
    request: Any
    detokenizer: IncrementalDetokenizer
    logprobs: list[dict[int, float]] | None
    cumulative_logprob: float | None = None

    def finish_reason(self) -> str | None:
        return self.request.status.finish_reason if self.request.status.is_finished else None

    def stop_reason(self) -> int | str | None:
        return self.detokenizer.stop_reason or self.request.stop_reason

    def output(self) -> CompletionOutput:
        return CompletionOutput(
            index=self.index,
            text=self.detokenizer.text,
            token_ids=list(self.request.output_token_ids),
            cumulative_logprob=self.cumulative_logprob,
            logprobs=None if self.logprobs is None else list(self.logprobs),
            finish_reason=self.finish_reason(),
            stop_reason=self.stop_reason(),
        )


@dataclass
class _Group:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    sequences: list[_Sequence]
    metrics: RequestMetrics
    changed: bool = False

    @property
    def finished(self) -> bool:
        return all(s.finish_reason() is not None for s in self.sequences)

    def output(self) -> RequestOutput:
        first = self.sequences[0].request
        self.metrics.num_cached_tokens = max(first.num_cached_tokens, 0)
        self.metrics.num_preemptions = sum(s.request.num_preemptions for s in self.sequences)
        if self.metrics.first_scheduled_time is None:
            self.metrics.first_scheduled_time = first.first_scheduled_time
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[s.output() for s in self.sequences],
            finished=self.finished,
            metrics=replace(self.metrics),
        )


@dataclass
class OutputProcessor:
    tokenizer: Any
    groups: dict[str, _Group] = field(default_factory=dict)
    sequences: dict[str, tuple[_Group, _Sequence]] = field(default_factory=dict)

    def add(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: Any,
        children: list[Any],
    ) -> None:
        metrics = RequestMetrics(arrival_time=children[0].arrival_time)
        group = _Group(request_id, prompt, prompt_token_ids, [], metrics)
        for index, child in enumerate(children):
            detokenizer = IncrementalDetokenizer(
                self.tokenizer, prompt_token_ids, child.sampling_params
            )
            wants_logprobs = child.sampling_params.logprobs is not None
            sequence = _Sequence(
                index,
                child,
                detokenizer,
                [] if wants_logprobs else None,
                0.0 if wants_logprobs else None,
            )
            group.sequences.append(sequence)
            self.sequences[child.request_id] = (group, sequence)
        self.groups[request_id] = group

    def has(self, request_id: str) -> bool:
        return request_id in self.groups

    def children_of(self, request_id: str) -> list[str]:
        group = self.groups.get(request_id)
        return [] if group is None else [s.request.request_id for s in group.sequences]

    def abort(self, request_ids: list[str]) -> None:
        """Mark aborted requests (the scheduler has finished them) for the next report."""
        for request_id in request_ids:
            if request_id in self.groups:
                self.groups[request_id].changed = True

    def process(self, result: Any, now: float) -> list[str]:
        """Detokenize the step's tokens; return the child ids a stop string ended."""
        stopped = []
        for child_id, token in result.sampled.items():
            group, sequence = self.sequences[child_id]
            group.changed = True
            if group.metrics.first_token_time is None:
                group.metrics.first_token_time = now
            request = sequence.request
            logprobs = result.logprobs.get(child_id)
            if logprobs is not None and sequence.logprobs is not None:
                sequence.logprobs.append(logprobs.as_dict())
                sequence.cumulative_logprob += logprobs.logprob
            detokenizer = sequence.detokenizer
            detokenizer.update([token], stop_terminated=self._ended_by_stop_token(request, token))
            if detokenizer.stop_reason is not None and not request.status.is_finished:
                stopped.append(child_id)
            elif request.status.is_finished:
                detokenizer.flush()
        return stopped

    @staticmethod
    def _ended_by_stop_token(request: Any, token: int) -> bool:
        """Whether ``token`` ended the request as a stop token id or end of text."""
        if request.status.finish_reason != "stop":
            return False
        return request.stop_reason == token or token == request.eos_token_id

    def changed(self, now: float, finished_only: bool = False) -> list[RequestOutput]:
        """Outputs of the requests that changed since the last call; finished ones are dropped.

        With ``finished_only`` only finished requests make an output (offline callers that
        wait for the end skip building a snapshot per request per step).
        """
        outputs = []
        for request_id in [r for r, g in self.groups.items() if g.changed]:
            group = self.groups[request_id]
            group.changed = False
            if group.finished:
                group.metrics.finished_time = now
                self._drop(request_id)
            elif finished_only:
                continue
            outputs.append(group.output())
        return outputs

    def collect_finished(self) -> list[RequestOutput]:
        """Outputs of requests that finished without a step (aborted while waiting)."""
        import time

        return self.changed(time.monotonic())

    def _drop(self, request_id: str) -> None:
        group = self.groups.pop(request_id)
        for sequence in group.sequences:
            self.sequences.pop(sequence.request.request_id, None)
