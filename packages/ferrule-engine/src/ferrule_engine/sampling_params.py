"""``SamplingParams``: how one request picks its tokens and when it stops, validated up front.

The fields and their meaning follow vLLM and the OpenAI API: ``temperature=0`` is greedy,
``top_k`` 0 or -1 and ``top_p=1`` switch those filters off, penalties follow Hugging Face
(repetition) and OpenAI (presence, frequency). Invalid values raise
:class:`~ferrule_core.errors.ConfigError` (a ``ValueError``) listing every problem, each with the
value, the rule and a valid example.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ferrule_core.errors import ConfigError

_SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Sampling settings of one request.

    ``n`` samples per prompt; ``temperature`` (0 = greedy); ``top_p`` nucleus mass; ``top_k``
    most likely tokens (0 or -1 = all); ``min_p`` drops tokens below ``min_p`` times the top
    probability; ``repetition_penalty`` (> 1 discourages tokens of the prompt and output, as in
    Hugging Face); ``presence_penalty`` / ``frequency_penalty`` in [-2, 2] subtract from the logit
    of every output token once / per occurrence (OpenAI); ``seed`` makes the request's draws
    reproducible whatever batch it runs in; ``max_tokens`` (None = up to the model's length)
    and ``min_tokens`` bound the output; ``stop`` strings and ``stop_token_ids`` end it (EOS too,
    unless ``ignore_eos``); ``logprobs`` asks for the sampled token's log-probability and that
    many alternatives (0 = only the sampled one); ``include_stop_str_in_output`` keeps the stop
    string in the text; ``skip_special_tokens`` drops special tokens from the text.

    >>> SamplingParams(temperature=0.7, top_p=0.9, stop="\\n").stop
    ['\\n']
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        problems: list[str] = []
        stop = self._normalize_stop(problems)
        stop_ids = self._normalize_stop_token_ids(problems)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", stop_ids)
        problems += _number_problems(self)
        if problems:
            raise ConfigError(problems)

    # --- derived ---------------------------------------------------------------------

    @property
    def greedy(self) -> bool:
        """True when the most likely token is always taken (``temperature == 0``)."""
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        """True when a repetition, presence or frequency penalty changes the logits."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    def clone(self, **changes: Any) -> SamplingParams:
        """A copy with ``changes`` applied, validated again: ``params.clone(n=1, seed=7)``."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(
                f"SamplingParams has no field {', '.join(unknown)}; valid fields: "
                f"{', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)

    # --- normalization -----------------------------------------------------------------

    def _normalize_stop(self, problems: list[str]) -> list[str]:
        stop = self.stop
        if stop is None:
            return []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, Iterable):
            problems.append(f"stop={stop!r} must be a string or a list of strings, e.g. ['\\n\\n']")
            return []
        stop = list(stop)
        bad = [s for s in stop if not isinstance(s, str) or not s]
        if bad:
            problems.append(
                f"stop={stop!r} holds {bad!r}; every stop string must be a non-empty str, "
                "e.g. stop=['\\n\\n', 'User:']"
            )
        return stop

    def _normalize_stop_token_ids(self, problems: list[str]) -> list[int]:
        ids = self.stop_token_ids
        if ids is None:
            return []
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            problems.append(
                f"stop_token_ids={ids!r} must be a list of token ids, e.g. stop_token_ids=[2]"
            )
            return []
        ids = list(ids)
        bad = [t for t in ids if not _is_int(t) or t < 0]
        if bad:
            problems.append(
                f"stop_token_ids={ids!r} holds {bad!r}; token ids are integers >= 0, "
                "e.g. stop_token_ids=[2]"
            )
        return [int(t) for t in ids if _is_int(t)]


def _number_problems(p: SamplingParams) -> list[str]:
    problems = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    check(_is_int(p.n) and p.n >= 1, f"n={p.n!r} must be an integer >= 1, e.g. n=1")
    check(
        _is_real(p.temperature) and p.temperature >= 0,
        f"temperature={p.temperature!r} must be a finite number >= 0 (0 = greedy), "
        "e.g. temperature=0.7",
    )
    check(
        _is_real(p.top_p) and 0 < p.top_p <= 1,
        f"top_p={p.top_p!r} must be in (0, 1] (1 = off), e.g. top_p=0.9",
    )
    check(
        _is_int(p.top_k) and p.top_k >= -1,
        f"top_k={p.top_k!r} must be an integer >= 1, or 0 or -1 for off, e.g. top_k=50",
    )
    check(
        _is_real(p.min_p) and 0 <= p.min_p <= 1,
        f"min_p={p.min_p!r} must be in [0, 1] (0 = off), e.g. min_p=0.05",
    )
    check(
        _is_real(p.repetition_penalty) and p.repetition_penalty > 0,
        f"repetition_penalty={p.repetition_penalty!r} must be a finite number > 0 (1 = off), "
        "e.g. repetition_penalty=1.1",
    )
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(p, name)
        check(
            _is_real(value) and -2 <= value <= 2,
            f"{name}={value!r} must be in [-2, 2] (0 = off), e.g. {name}=0.5",
        )
    check(
        p.seed is None or (_is_int(p.seed) and _SEEDS[0] <= p.seed <= _SEEDS[1]),
        f"seed={p.seed!r} must be None or an integer in [-2**63, 2**64), e.g. seed=1234",
    )
    check(
        p.max_tokens is None or (_is_int(p.max_tokens) and p.max_tokens >= 1),
        f"max_tokens={p.max_tokens!r} must be None (up to the model's length) or an integer "
        ">= 1, e.g. max_tokens=128",
    )
    if _is_int(p.min_tokens) and p.min_tokens >= 0:
        check(
            p.max_tokens is None or not _is_int(p.max_tokens) or p.min_tokens <= p.max_tokens,
            f"min_tokens={p.min_tokens} must not exceed max_tokens={p.max_tokens}, "
            f"e.g. min_tokens={min(p.min_tokens, p.max_tokens or 0)}",
        )
    else:
        problems.append(f"min_tokens={p.min_tokens!r} must be an integer >= 0, e.g. min_tokens=0")
    check(
        p.logprobs is None or (_is_int(p.logprobs) and p.logprobs >= 0),
        f"logprobs={p.logprobs!r} must be None or an integer >= 0 (0 = only the sampled "
        "token), e.g. logprobs=5",
    )
    for name in ("ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
        value = getattr(p, name)
        check(isinstance(value, bool), f"{name}={value!r} must be True or False")
    return problems


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
