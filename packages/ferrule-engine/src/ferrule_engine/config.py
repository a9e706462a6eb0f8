"""``SchedulerConfig``: the limits one scheduler step works within, validated up front."""

from __future__ import annotations

from dataclasses import dataclass

from ferrule_core.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """Settings of a :class:`~ferrule_engine.scheduler.Scheduler`.

    ``max_num_batched_tokens`` is the token budget of one step and ``max_num_seqs`` the most
    requests running at once. ``num_blocks`` KV blocks of ``block_size`` tokens (block 0 is
    reserved) must hold at least one request of ``max_model_len`` tokens, so that the oldest
    request can always make progress. Without ``chunked_prefill`` a prompt is computed in one
    step, so the budget must cover ``max_model_len``. ``policy`` names the scheduling policy
    (``fcfs``, ``priority`` or a plugin's); ``sliding_window`` applies to every layer.
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int
    block_size: int = 16
    num_blocks: int
    enable_prefix_caching: bool = True
    chunked_prefill: bool = True
    policy: str = "fcfs"
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                problems.append(f"{name}={value!r} must be a positive integer")
        if not _is_int(self.num_blocks) or self.num_blocks < 2:
            problems.append(
                f"num_blocks={self.num_blocks!r} must be an integer >= 2 (block 0 is reserved)"
            )
        if self.sliding_window is not None and (
            not _is_int(self.sliding_window) or self.sliding_window < 1
        ):
            problems.append(
                f"sliding_window={self.sliding_window!r} must be a positive integer or None"
            )
        if not isinstance(self.policy, str) or not self.policy:
            problems.append(f"policy={self.policy!r} must name a policy, e.g. 'fcfs' or 'priority'")
        if problems:
            raise ConfigError(problems)
        needed = -(-self.max_model_len // self.block_size)
        if needed > self.num_blocks - 1:
            problems.append(
                f"num_blocks={self.num_blocks} holds {self.num_blocks - 1} usable blocks of "
                f"{self.block_size} tokens, but one request of max_model_len={self.max_model_len} "
                f"needs {needed}; give num_blocks >= {needed + 1} or max_model_len <= "
                f"{(self.num_blocks - 1) * self.block_size}"
            )
        if not self.chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            problems.append(
                f"max_num_batched_tokens={self.max_num_batched_tokens} is below "
                f"max_model_len={self.max_model_len}: without chunked prefill a long prompt could "
                "never be scheduled; raise it, lower max_model_len, or enable chunked_prefill"
            )
        if problems:
            raise ConfigError(problems)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
