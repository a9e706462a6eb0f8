"""Perplexity of a causal language model over one long text, in fixed windows.

The text is tokenized once, as a whole and without special tokens, then cut into windows of
``seq_len`` tokens. Inside a window every token but the first is predicted from the tokens before
it in the same window; the window's first token has no context there and is not scored.

- ``stride=None`` (the default, as in the GPTQ paper): non-overlapping windows ``[0, seq_len)``,
  ``[seq_len, 2*seq_len)``, ... Each scores ``seq_len - 1`` tokens; a final shorter window is scored
  too (its length minus one), and one of a single token, which has nothing to score, is dropped.
- ``stride < seq_len`` (Hugging Face's perplexity guide): windows of ``seq_len`` tokens starting every
  ``stride`` tokens, until one reaches the end of the text (that last one may be shorter). Each
  window scores only its new tokens, those no earlier window scored, so every token after the first
  is scored exactly once, with at least ``seq_len - stride`` tokens of context after the first window.

perplexity = exp(total negative log-likelihood / scored tokens), summed in float64 from a float32
log-softmax of the logits.

    >>> ids = tokenize_text(tokenizer, text, max_tokens=8192)
    >>> perplexity(model, ids, seq_len=1024)  # 8 windows, 8 * 1023 scored tokens
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerplexityResult:
    """``perplexity`` = exp(``nll``); ``nll`` is the mean over ``tokens`` scored tokens."""

    perplexity: float
    tokens: int
    windows: int
    nll: float

    def __str__(self) -> str:
        return (
            f"perplexity {self.perplexity:.4f} over {self.tokens} tokens in {self.windows} windows"
        )


def tokenize_text(tokenizer: Any, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """The whole ``text`` tokenized without special tokens, as a 1-D LongTensor, cut to ``max_tokens``."""
    if not text:
        raise ValueError("text is empty; pass the text to evaluate on")
    _check_max_tokens(max_tokens)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids[:max_tokens], dtype=torch.long)


def plan_windows(
    n_tokens: int, seq_len: int, stride: int | None = None
) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` for each window: tokens ``[first_scored, end)`` are scored."""
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is too short: a window needs >= 2 tokens to score one")
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise ValueError(
            f"stride={stride} is invalid: use 1 <= stride <= seq_len ({seq_len}) or None"
        )
    windows, scored_to = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + seq_len, n_tokens)
        first = max(scored_to, begin + 1)
        if first < end:
            windows.append((begin, end, first))
            scored_to = end
        if end == n_tokens:
            break
    return windows


def perplexity(
    model: Any,
    input_ids: torch.Tensor,
    *,
    seq_len: int = 2048,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` (a causal LM: ``model(input_ids=...).logits``) on ``input_ids``.

    ``input_ids`` is the whole text (1-D; use ``tokenize_text``), of which the first ``max_tokens``
    are used (all if None). See the module docstring for how windows are cut and scored.
    ``batch_size`` windows of equal length run in one forward pass. ``device`` defaults to the
    model's. The model is put in eval mode for the call and restored afterwards.
    """
    if input_ids.dim() == 2 and input_ids.shape[0] == 1:
        input_ids = input_ids[0]
    if input_ids.dim() != 1 or input_ids.is_floating_point():
        raise ValueError(
            f"input_ids must be a 1-D tensor of token ids, got {input_ids.dtype} of shape {tuple(input_ids.shape)}"
        )
    _check_max_tokens(max_tokens)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is invalid: use batch_size >= 1")
    ids = input_ids[:max_tokens]
    windows = plan_windows(len(ids), seq_len, stride)
    if not windows:
        raise ValueError(f"the text has {len(ids)} token(s); at least 2 are needed to score one")
    device = torch.device(device) if device is not None else _model_device(model)

    batches: list[list[tuple[int, int, int]]] = []
    for window in windows:  # consecutive windows of one length share a forward pass
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and last[0][1] - last[0][0] == window[1] - window[0]:
            last.append(window)
        else:
            batches.append([window])

    total_nll, scored = 0.0, 0
    training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    bar = tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress)
    try:
        with torch.inference_mode():
            for batch in batches:
                rows = torch.stack([ids[begin:end] for begin, end, _ in batch]).to(device)
                logits = model(input_ids=rows).logits
                for row, (begin, end, first) in enumerate(batch):
                    # Logits at position p predict token p + 1: targets [first, end) come from [first - 1, end - 1).
                    logprobs = (
                        logits[row, first - 1 - begin : end - 1 - begin].float().log_softmax(-1)
                    )
                    targets = rows[row, first - begin : end - begin].unsqueeze(-1)
                    total_nll -= logprobs.gather(-1, targets).double().sum().item()
                    scored += end - first
                bar.update(len(batch))
                bar.set_postfix(ppl=f"{math.exp(total_nll / scored):.3f}")
    finally:
        bar.close()
        if training and hasattr(model, "train"):
            model.train()

    nll = total_nll / scored
    result = PerplexityResult(
        perplexity=math.exp(nll), tokens=scored, windows=len(windows), nll=nll
    )
    logger.info("%s (seq_len %d, stride %s)", result, seq_len, stride)
    return result


def _check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(
            f"max_tokens={max_tokens} is invalid: use a positive number of tokens or None (all)"
        )


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")
