"""top-k, top-p and min-p as thresholds on scaled logits, and the draws that follow them.

Every filter keeps the tokens at or above a per-row threshold on ``z = (logit - max) /
temperature`` (ties at a threshold are all kept), so the kept set is ``z >= max(thresholds)``:

- top-k: the k-th largest ``z``;
- top-p: the smallest ``z`` whose strictly more likely tokens hold less than ``top_p`` of the
  mass left after top-k (renormalized after top-k, as in Hugging Face and vLLM);
- min-p: ``log(min_p)``, since ``p / p_max = exp(z)``.

The thresholds come from a ``topk`` of a few hundred candidates per row, grown (x16) only while
a row's nucleus is larger; a full sort is the last resort. A row's candidate width depends on
its own params only, so its result does not depend on the batch. A draw is an inverse-CDF
lookup of one uniform number per row, over the kept tokens in vocabulary order: among the
candidates when they hold every kept token, else over the whole row in two levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ferrule_engine.sampling_params import SamplingParams

# exp() of float32 below about -87.3 gives subnormals, 30-50x slower on CPUs. The sampler clamps
# z at Z_FLOOR, and every row keeps only z >= KEEP_FLOOR: a token less likely than 4e-38 times
# the top token (a -inf logit too) is never drawn.
Z_FLOOR = -87.0
KEEP_FLOOR = -86.0
_BASE_CANDIDATES = 256  # candidates per row at first
_BLOCK = 1024  # block size of the two-level inverse CDF


@dataclass
class Candidates:
    """Rows whose kept tokens all lie among their sorted top candidates ``values``/``ids``."""

    rows: torch.Tensor  # local indices into the sampled rows
    values: torch.Tensor  # [R, K] scaled logits, descending
    ids: torch.Tensor  # [R, K] token ids
    kept: torch.Tensor  # [R, K] bool

    def draw(self, u: torch.Tensor) -> torch.Tensor:
        vocab_end = torch.iinfo(torch.long).max // 2
        key = torch.where(self.kept, self.ids, self.ids + vocab_end)
        order = torch.argsort(key, dim=-1)  # kept tokens first, in vocabulary order
        weights = torch.where(self.kept, self.values.exp(), 0).double().gather(1, order)
        cdf = weights.cumsum(dim=-1)
        target = (u * cdf[:, -1]).unsqueeze(1)
        pos = torch.searchsorted(cdf, target, right=True).squeeze(1)
        pos = torch.minimum(pos, self.kept.sum(dim=-1) - 1)
        return self.ids.gather(1, order).gather(1, pos.unsqueeze(1)).squeeze(1)


def find_thresholds(
    z: torch.Tensor, params: Sequence[SamplingParams], masses: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[Candidates], torch.Tensor]:
    """Per-row thresholds, the candidate groups and the rows drawn over the whole vocabulary.

    ``masses`` (``exp(z).sum(-1)``, if the caller has it) saves a pass for top-p rows.
    """
    device, (num_rows, vocab) = z.device, z.shape
    thresholds = torch.full((num_rows,), KEEP_FLOOR, device=device)
    pending = [i for i, p in enumerate(params) if filters_active(p, vocab)]
    full_rows = sorted(set(range(num_rows)) - set(pending))
    groups = []
    widths = {i: _first_width(params[i], vocab) for i in pending}
    mass = torch.zeros(num_rows, dtype=torch.float64, device=device)
    need_mass = [i for i in pending if needs_row_mass(params[i], vocab)]
    if masses is not None:
        mass = masses.double()
    elif need_mass:
        mass[need_mass] = _row_masses(_take(z, need_mass)).double()
    while pending:
        # One read back a round (which rows the candidates decided); the widths are the
        # host's own numbers.
        index = torch.tensor(pending, device=device)
        row_widths = [widths[i] for i in pending]
        width = torch.tensor(row_widths, device=device)
        values, ids = torch.topk(_take(z, pending), max(row_widths), dim=-1)
        valid = torch.arange(values.shape[1], device=device) < width.unsqueeze(1)
        thr, resolved, kept_count = _resolve(
            values, valid, [params[i] for i in pending], mass[index], vocab
        )
        thresholds[index] = thr
        complete = resolved & ((kept_count < width) | (width == vocab))
        res, comp = torch.stack([resolved, complete]).tolist()
        done = [j for j, c in enumerate(comp) if c]
        if done:
            take = torch.tensor(done, device=device)
            kept = valid[take] & (values[take] >= thr[take].unsqueeze(1))
            groups.append(Candidates(index[take], values[take], ids[take], kept))
        full_rows += [i for i, r, c in zip(pending, res, comp, strict=True) if r and not c]
        pending = [i for i, r in zip(pending, res, strict=True) if not r]
        for i in pending:
            widths[i] = min(vocab, widths[i] * 16)
    return thresholds, groups, torch.tensor(sorted(full_rows), dtype=torch.long, device=device)


def _take(z: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``z[rows]``, without a copy when ``rows`` are all the rows in order."""
    if rows == list(range(z.shape[0])):
        return z
    return z.index_select(0, torch.tensor(rows, device=z.device))


def _row_masses(z: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """``exp(z).sum(-1)`` a few rows at a time (no ``z``-sized temporary)."""
    return torch.cat([z[i : i + chunk].exp().sum(dim=-1) for i in range(0, z.shape[0], chunk)])


def _resolve(
    values: torch.Tensor,
    valid: torch.Tensor,
    params: Sequence[SamplingParams],
    mass: torch.Tensor,
    vocab: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thresholds from the sorted candidates ``values`` (``valid`` marks each row's width).

    Returns the thresholds, whether the candidates decided them (else a row needs more) and
    how many candidates each threshold keeps.
    """
    device = values.device
    widths = valid.sum(dim=-1)
    whole = widths == vocab
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else 0 for p in params], device=device)
    has_k = top_k > 0
    kth = values.gather(1, (top_k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    thr_k = torch.where(has_k, kth, -math.inf)
    in_k = valid & (values >= thr_k.unsqueeze(1))
    count_k = in_k.sum(dim=-1)
    k_ok = ~has_k | (count_k < widths) | whole
    # top-p over the distribution left by top-k: exclusive prefix mass < top_p * its mass
    weights = torch.where(in_k, values.exp(), 0).double()
    cdf = weights.cumsum(dim=-1)
    mass_k = cdf.gather(1, (count_k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    norm = torch.where(has_k, mass_k, mass)
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float64, device=device)
    has_p = top_p < 1
    in_p = in_k & ((cdf - weights) < (top_p * norm).unsqueeze(1))
    count_p = in_p.sum(dim=-1).clamp(min=1)
    last_p = values.gather(1, (count_p - 1).unsqueeze(1)).squeeze(1)
    thr_p = torch.where(has_p, last_p, -math.inf)
    p_ok = ~has_p | (count_p < widths) | whole
    min_p = torch.tensor(
        [max(math.log(p.min_p), KEEP_FLOOR) if p.min_p > 0 else KEEP_FLOOR for p in params],
        device=device,
    )
    thr = torch.maximum(torch.maximum(thr_k, thr_p), min_p)
    kept_count = (valid & (values >= thr.unsqueeze(1))).sum(dim=-1)
    return thr, k_ok & p_ok, kept_count


def filters_active(p: SamplingParams, vocab: int) -> bool:
    """True when top-k, top-p or min-p removes tokens (top_k >= vocab removes none)."""
    return 0 < p.top_k < vocab or p.top_p < 1 or p.min_p > 0


def needs_row_mass(p: SamplingParams, vocab: int) -> bool:
    """top-p without top-k needs the probability mass of the whole row."""
    return p.top_p < 1 and not 0 < p.top_k < vocab


def _first_width(p: SamplingParams, vocab: int) -> int:
    width = _BASE_CANDIDATES
    if 0 < p.top_k < vocab:
        width = max(width, 1 << p.top_k.bit_length())  # > top_k: room to see the ties end
    return min(width, vocab)


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index ``i`` per row with ``cdf[i-1] <= u * total < cdf[i]`` in vocabulary order.

    Two levels keep it one pass over the weights: block sums find the block, a float64
    cumulative sum inside that block finds the token. A token of weight 0 is never chosen.
    """
    device, vocab = weights.device, weights.shape[1]
    whole = vocab // _BLOCK * _BLOCK
    sums = weights[:, :whole].unflatten(1, (vocab // _BLOCK, _BLOCK)).sum(dim=-1)
    if whole < vocab:
        sums = torch.cat([sums, weights[:, whole:].sum(dim=-1, keepdim=True)], dim=1)
    sums = sums.double()
    cdf = sums.cumsum(dim=-1)
    target = u * cdf[:, -1]
    block = torch.searchsorted(cdf, target.unsqueeze(1), right=True).squeeze(1)
    block = torch.minimum(block, _last_positive(sums))
    before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0).unsqueeze(1))[:, 0], 0)
    cols = block.unsqueeze(1) * _BLOCK + torch.arange(_BLOCK, device=device)
    inside = torch.where(cols < vocab, weights.gather(1, cols.clamp(max=vocab - 1)), 0).double()
    inner = inside.cumsum(dim=-1)
    pos = torch.searchsorted(inner, (target - before).unsqueeze(1), right=True).squeeze(1)
    pos = torch.minimum(pos, _last_positive(inside))
    return block * _BLOCK + pos


def _last_positive(weights: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(weights.shape[1], device=weights.device)
    return torch.where(weights > 0, positions, 0).amax(dim=-1)
