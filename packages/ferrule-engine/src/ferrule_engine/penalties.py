"""Repetition, presence and frequency penalties, applied in place to rows of logits.

Repetition (Hugging Face ``RepetitionPenaltyLogitsProcessor``): every token of the prompt and
the output has its logit divided by the penalty when positive, multiplied by it when negative.
Presence and frequency (OpenAI): ``logit - presence * [count > 0] - frequency * count`` over the
output tokens only. Repetition comes first, as in vLLM. The work is proportional to the number
of tokens, not to the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def apply_penalties_(logits: torch.Tensor, params: Sequence[Any], histories: Sequence) -> None:
    """Penalize ``logits[i]`` (shape ``[R, V]``) by ``params[i]`` in place.

    ``histories[i]`` is ``(prompt_token_ids, output_token_ids)`` of row ``i`` (lists or 1-D
    tensors of ids in ``[0, V)``). Rows whose params carry no penalty are left alone.
    """
    num_rows, vocab = logits.shape
    device = logits.device
    repetition = torch.ones(num_rows, dtype=logits.dtype)
    presence = torch.zeros(num_rows, dtype=logits.dtype)
    frequency = torch.zeros(num_rows, dtype=logits.dtype)
    seen, counted = [], []
    for i, (p, (prompt, output)) in enumerate(zip(params, histories, strict=True)):
        if p.repetition_penalty != 1.0:
            repetition[i] = p.repetition_penalty
            seen.append(_keys(i, vocab, (prompt, output)))
        if (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0) and len(output):
            presence[i], frequency[i] = p.presence_penalty, p.frequency_penalty
            counted.append(_keys(i, vocab, (output,)))
    flat = logits.view(-1)
    if seen:
        keys = torch.cat(seen).to(device)  # duplicates compute and write the same value
        penalty = repetition.to(device)[keys // vocab]
        values = flat[keys]
        flat[keys] = torch.where(values < 0, values * penalty, values / penalty)
    if counted:
        keys, counts = torch.unique(torch.cat(counted), return_counts=True)
        keys, counts = keys.to(device), counts.to(device)
        rows = keys // vocab
        flat[keys] -= presence.to(device)[rows] + frequency.to(device)[rows] * counts.to(
            logits.dtype
        )


def _keys(row: int, vocab: int, parts: tuple) -> torch.Tensor:
    """Flat indices ``row * vocab + token`` of the tokens in ``parts``, on the CPU."""
    tensors = [
        t.to(device="cpu", dtype=torch.long)
        if isinstance(t, torch.Tensor)
        else torch.tensor(list(t), dtype=torch.long)
        for t in parts
        if len(t)
    ]
    if not tensors:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(tensors) + row * vocab
