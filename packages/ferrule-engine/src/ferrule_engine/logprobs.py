"""Log-probabilities of sampled tokens, from the raw model distribution (as vLLM's default).

``log_softmax`` of the logits before penalties, temperature and filters: what the model
thinks of the token, not what the sampler drew it from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TokenLogprobs:
    """The sampled token's log-probability and rank (1 = the most likely token) and the
    ``top`` most likely ``(token_id, logprob)`` pairs, most likely first."""

    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float]] = field(default_factory=list)

    def as_dict(self) -> dict[int, float]:
        """``{token_id: logprob}``: the sampled token first, then the top alternatives."""
        out = {self.token_id: self.logprob}
        for token, logprob in self.top:
            out.setdefault(token, logprob)
        return out


def compute_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, num_top: Sequence[int]
) -> list[TokenLogprobs]:
    """Logprobs of ``token_ids[i]`` under ``log_softmax(logits[i])`` with ``num_top[i]``
    alternatives each. ``logits`` is ``[R, V]`` (raw), ``token_ids`` ``[R]``."""
    if logits.shape[0] == 0:
        return []
    logits = logits.float()
    vocab = logits.shape[1]
    maxima = logits.amax(dim=-1, keepdim=True)
    shifted = (logits - maxima).clamp_(min=-87.0)  # no subnormals (slow); their mass is < 1e-33
    log_norm = maxima + shifted.exp_().sum(dim=-1, keepdim=True).log()
    chosen = logits.gather(1, token_ids.view(-1, 1).to(logits.device))
    # Rank among the raw logits: one plus the number of strictly more likely tokens.
    ranks = (logits > chosen).sum(dim=-1) + 1
    chosen_lp = (chosen - log_norm).view(-1)
    k = min(max(num_top, default=0), vocab)
    top_values, top_ids = (None, None)
    if k > 0:
        top_values, top_ids = torch.topk(logits, k, dim=-1)
        top_values = (top_values - log_norm).tolist()
        top_ids = top_ids.tolist()
    out = []
    for i, (token, lp, rank) in enumerate(
        zip(token_ids.tolist(), chosen_lp.tolist(), ranks.tolist(), strict=True)
    ):
        n = min(num_top[i], vocab)
        top = list(zip(top_ids[i][:n], top_values[i][:n], strict=True)) if n else []
        out.append(TokenLogprobs(int(token), float(lp), int(rank), top))
    return out
