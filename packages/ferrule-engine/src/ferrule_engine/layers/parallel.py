"""``TensorParallelGroup``: which shard of each layer this process holds.

Tensor parallelism is not implemented yet: layers accept a group of size 1 only and
refuse larger ones with an error that says so, so that a model built for several ranks
fails at construction instead of computing a wrong shard.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferrule_core.errors import ConfigError


@dataclass(frozen=True)
class TensorParallelGroup:
    """``rank`` of ``size`` processes that split every parallel layer between them."""

    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ConfigError(
                f"TensorParallelGroup(rank={self.rank}, size={self.size}) is invalid: "
                "size must be >= 1 and 0 <= rank < size"
            )

    def require_single(self, what: str) -> None:
        """Refuse to build ``what`` for more than one rank (not supported yet)."""
        if self.size != 1:
            raise ConfigError(
                f"{what}: tensor parallelism (size={self.size}) is not supported yet; "
                "use TensorParallelGroup(rank=0, size=1)"
            )
