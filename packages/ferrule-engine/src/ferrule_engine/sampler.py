"""The sampler: one batch of logits in, one token (and maybe logprobs) per row out.

Order, as in vLLM: penalties (:mod:`ferrule_engine.penalties`) → greedy rows take the argmax →
temperature → top-k → top-p → min-p (thresholds, :mod:`ferrule_engine.sampling_filters`) →
draw. A draw is an inverse-CDF lookup of one uniform number per row. A row with a seed draws
its number from its own generator, so its tokens do not depend on the batch it is in; the
others share the sampler's generator. When every row is greedy without penalties or logprobs,
sampling is a single argmax. Logprobs come from the raw logits (:mod:`ferrule_engine.logprobs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ferrule_engine.logprobs import TokenLogprobs, compute_logprobs
from ferrule_engine.penalties import apply_penalties_
from ferrule_engine.sampling_filters import (
    KEEP_FLOOR,
    Z_FLOOR,
    Candidates,
    filters_active,
    find_thresholds,
    inverse_cdf,
    needs_row_mass,
)
from ferrule_engine.sampling_params import SamplingParams


@dataclass
class SamplingRow:
    """One row of the logits: its request's params, token history and seeded generator.

    ``generator`` must be given when ``params.seed`` is set: make it once per request with
    :func:`make_generator` and pass the same one every step (each draw advances it).
    """

    params: SamplingParams
    prompt_token_ids: Sequence[int] | torch.Tensor = ()
    output_token_ids: Sequence[int] | torch.Tensor = ()
    generator: torch.Generator | None = None


@dataclass
class SamplerOutput:
    """A token id per row and, for rows whose params ask for logprobs, their logprobs."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with ``seed``, for the :class:`SamplingRow` of a seeded request."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class Sampler:
    """Samples a token per row of ``logits`` (``[N, V]``).

    Rows without a seed draw from one shared generator: seeded with ``seed``, or torch's
    default generator when ``seed`` is None. Not thread-safe (it reuses scratch buffers on
    the CPU).
    """

    def __init__(self, seed: int | None = None):
        self._generator = None if seed is None else make_generator(seed)
        self._scratch = _Scratch()

    def sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplerOutput:
        _check(logits, rows)
        num_rows = logits.shape[0]
        params = [r.params for r in rows]
        if all(p.greedy and not p.has_penalties and p.logprobs is None for p in params):
            return SamplerOutput(logits.argmax(dim=-1).tolist(), [None] * num_rows)
        logits = logits.float()
        plan = _plan(logits, rows, self._scratch)
        if plan.sampled:
            u = self._uniforms([rows[i] for i in plan.sampled], logits.device)
            drawn = torch.empty(len(plan.sampled), dtype=torch.long, device=logits.device)
            for group in plan.groups:
                drawn[group.rows] = group.draw(u[group.rows])
            if plan.full_rows.numel():
                weights = _weights(plan, plan.full_rows, self._scratch)
                drawn[plan.full_rows] = inverse_cdf(weights, u[plan.full_rows])
            plan.tokens[plan.sampled_index] = drawn
        wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
        logprobs: list[TokenLogprobs | None] = [None] * num_rows
        if wanted:
            index = torch.tensor(wanted, device=logits.device)
            computed = compute_logprobs(
                logits.index_select(0, index),
                plan.tokens[index],
                [params[i].logprobs for i in wanted],
            )
            for i, lp in zip(wanted, computed, strict=True):
                logprobs[i] = lp
        return SamplerOutput(plan.tokens.tolist(), logprobs)

    def _uniforms(self, rows: Sequence[SamplingRow], device: torch.device) -> torch.Tensor:
        """One uniform number in [0, 1) per sampled row, float64, on ``device``."""
        u = torch.empty(len(rows), dtype=torch.float64, device=device)
        shared = [i for i, r in enumerate(rows) if r.params.seed is None]
        if shared:
            draws = torch.rand(len(shared), generator=self._generator, dtype=torch.float64)
            u[shared] = draws.to(device)
        seeded = [i for i, r in enumerate(rows) if r.params.seed is not None]
        if seeded:  # each from its own generator, on the generator's device
            draws = [
                torch.rand(1, generator=g, device=g.device, dtype=torch.float64).to(device)
                for g in (rows[i].generator for i in seeded)
            ]
            u[seeded] = torch.cat(draws)
        return u


def processed_probs(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """The distribution each row is drawn from, ``[N, V]`` float32 (greedy rows: one-hot).

    The same penalties, temperature and filters as :meth:`Sampler.sample`; for tests and tools.
    """
    _check(logits, rows, need_generators=False)
    logits = logits.float()
    plan = _plan(logits, rows, _Scratch())
    probs = torch.zeros_like(logits)
    sampled = set(plan.sampled)
    greedy = [i for i in range(len(rows)) if i not in sampled]
    if greedy:
        index = torch.tensor(greedy, device=logits.device)
        probs[index, plan.tokens[index]] = 1.0
    if plan.sampled:
        local = torch.arange(len(plan.sampled), device=logits.device)
        weights = _weights(plan, local, _Scratch())
        probs[plan.sampled_index] = weights / weights.sum(dim=-1, keepdim=True)
    return probs


# --- planning: penalties, greedy argmax, temperature and thresholds ------------------------


@dataclass
class _Plan:
    tokens: torch.Tensor  # [N] long; greedy rows filled in
    sampled: list[int]  # batch rows that draw
    sampled_index: torch.Tensor
    z: torch.Tensor  # [S, V] scaled logits of the sampled rows
    thresholds: torch.Tensor  # [S] float32 (at least KEEP_FLOOR)
    groups: list[Candidates]
    full_rows: torch.Tensor  # local indices drawn over the whole vocabulary
    exp_z: torch.Tensor | None  # exp(z), when a row needs it whole


def _plan(logits: torch.Tensor, rows: Sequence[SamplingRow], scratch: _Scratch) -> _Plan:
    """Greedy tokens, then the scaled logits and thresholds of the rows that draw."""
    device, (num_rows, vocab) = logits.device, logits.shape
    params = [r.params for r in rows]
    tokens = torch.empty(num_rows, dtype=torch.long, device=device)
    plain = [i for i, p in enumerate(params) if p.greedy and not p.has_penalties]
    if len(plain) == num_rows:
        tokens = logits.argmax(dim=-1)
    elif plain:
        index = torch.tensor(plain, device=device)
        tokens[index] = logits.index_select(0, index).argmax(dim=-1)
    penalized_greedy = [i for i, p in enumerate(params) if p.greedy and p.has_penalties]
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    work = penalized_greedy + sampled  # rows that need their own copy of the logits
    work_index = torch.tensor(work, dtype=torch.long, device=device)
    z = _penalized(logits, rows, work, work_index, scratch)
    g = len(penalized_greedy)
    if g:
        tokens[work_index[:g]] = z[:g].argmax(dim=-1)
    z, sampled_params = z[g:], [params[i] for i in sampled]
    thresholds = torch.full((len(sampled),), KEEP_FLOOR, device=device)
    groups: list[Candidates] = []
    full_rows = torch.zeros(0, dtype=torch.long, device=device)
    exp_z = masses = None
    if sampled:
        temps = torch.tensor([p.temperature for p in sampled_params], device=device)
        z.div_(temps.unsqueeze(1)).clamp_(min=Z_FLOOR)
        if any(not filters_active(p, vocab) or needs_row_mass(p, vocab) for p in sampled_params):
            # one exp pass serves the top-p masses and the whole-row draws
            exp_z = torch.exp(z, out=scratch.get("exp_z", z.shape, torch.float32, device))
            masses = exp_z.sum(dim=-1)
        thresholds, groups, full_rows = find_thresholds(z, sampled_params, masses)
    return _Plan(tokens, sampled, work_index[g:], z, thresholds, groups, full_rows, exp_z)


def _penalized(
    logits: torch.Tensor,
    rows: Sequence[SamplingRow],
    work: list[int],
    work_index: torch.Tensor,
    scratch: _Scratch,
) -> torch.Tensor:
    """``logits[work]`` with penalties applied, minus each row's maximum (so max is 0)."""
    params = [rows[i].params for i in work]
    z = scratch.get("z", (len(work), logits.shape[1]), torch.float32, logits.device)
    every = work == list(range(logits.shape[0]))
    penalties = any(p.has_penalties for p in params)
    if every and not penalties:  # one pass
        return torch.sub(logits, _finite_max(logits), out=z)
    if every:
        z.copy_(logits)
    else:
        torch.index_select(logits, 0, work_index, out=z)
    if penalties:
        histories = [(rows[i].prompt_token_ids, rows[i].output_token_ids) for i in work]
        apply_penalties_(z, params, histories)
    return z.sub_(_finite_max(z))


def _finite_max(x: torch.Tensor) -> torch.Tensor:
    maxima = x.amax(dim=-1, keepdim=True)
    return torch.where(torch.isfinite(maxima), maxima, 0)


# --- drawing --------------------------------------------------------------------------------


def _weights(plan: _Plan, local: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """Unnormalized probabilities ``exp(z)`` of the kept tokens (0 elsewhere) of rows ``local``.

    May overwrite ``plan.exp_z``.
    """
    every = local.numel() == plan.z.shape[0]
    z = plan.z if every else plan.z.index_select(0, local)
    if plan.exp_z is None:
        weights = torch.exp(z, out=scratch.get("exp_z", z.shape, torch.float32, z.device))
    else:
        weights = plan.exp_z if every else plan.exp_z.index_select(0, local)
    mask = scratch.get("mask", z.shape, torch.float32, z.device)
    torch.ge(z, plan.thresholds[local].unsqueeze(1), out=mask)
    return weights.mul_(mask)


# --- plumbing -------------------------------------------------------------------------------


class _Scratch:
    """Reused CPU buffers (fresh CPU allocations of this size cost page faults each step)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device):
        numel = math.prod(shape)
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
            buffer = self._buffers[name] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(shape)


def _check(logits: Any, rows: Sequence[SamplingRow], need_generators: bool = True) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"logits must be a 2-D tensor [rows, vocab], got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if logits.shape[0] != len(rows):
        raise ValueError(
            f"logits has {logits.shape[0]} rows but {len(rows)} SamplingRows were given; "
            "give one row per line of logits"
        )
    if need_generators:
        for i, row in enumerate(rows):
            p = row.params
            if p.seed is not None and not p.greedy and row.generator is None:
                raise ValueError(
                    f"row {i} has seed={p.seed} but no generator; make one per request with "
                    "make_generator(seed) and pass the same one every step"
                )
