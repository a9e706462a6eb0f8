from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from ferrule_quant.evaluate import PerplexityResult, perplexity, plan_windows, tokenize_text

VOCAB = 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (300,), generator=torch.Generator().manual_seed(1))


def reference(model, ids, seq_len, stride):
    """An independent oracle: HF's perplexity-guide loop, labels masked with -100, cross_entropy."""
    nlls, count, prev_end, windows = [], 0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + seq_len, len(ids))
        window = ids[begin:end].unsqueeze(0)
        labels = window.clone()
        labels[:, : max(prev_end - begin, 0)] = -100  # already scored by an earlier window
        with torch.no_grad():
            logits = model(input_ids=window).logits.double()
        loss = F.cross_entropy(
            logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum"
        )  # fmt: skip
        n = int((labels[0, 1:] != -100).sum())
        if n:
            nlls.append(loss.item())
            count += n
            windows += 1
        prev_end = end
        if end == len(ids):
            break
    return math.exp(sum(nlls) / count), count, windows


@pytest.mark.parametrize(
    ("seq_len", "stride", "max_tokens"),
    [(64, None, None), (50, None, None), (64, 32, None), (64, 17, 250), (40, 40, 121)],
)
def test_matches_per_window_reference(model, ids, seq_len, stride, max_tokens):
    result = perplexity(
        model, ids, seq_len=seq_len, stride=stride, max_tokens=max_tokens, progress=False
    )
    expected, count, windows = reference(model, ids[:max_tokens], seq_len, stride or seq_len)
    assert result.tokens == count and result.windows == windows
    assert result.perplexity == pytest.approx(expected, rel=1e-5)
    assert result.nll == pytest.approx(math.log(expected), rel=1e-5)
    assert 1 < result.perplexity < 10 * VOCAB  # a random model: about the vocabulary size


def test_batches_give_the_same_result(model, ids):
    one = perplexity(model, ids, seq_len=64, stride=16, progress=False)
    three = perplexity(model, ids, seq_len=64, stride=16, batch_size=3, progress=False)
    assert three.tokens == one.tokens and three.windows == one.windows
    assert three.perplexity == pytest.approx(one.perplexity, rel=1e-5)


def test_counts_of_the_gptq_setting():
    windows = plan_windows(8192, 1024)
    assert len(windows) == 8 and sum(end - first for _, end, first in windows) == 8 * 1023


def test_final_windows():
    # A final window of one token has nothing to score and is dropped; a longer one is scored.
    assert plan_windows(2049, 1024) == [(0, 1024, 1), (1024, 2048, 1025)]
    assert plan_windows(2050, 1024)[-1] == (2048, 2050, 2049)
    # Strided: every token after the first is scored exactly once.
    windows = plan_windows(1000, 256, 100)
    scored = [t for _, end, first in windows for t in range(first, end)]
    assert scored == list(range(1, 1000)) and windows[-1][1] == 1000
    assert windows[0] == (0, 256, 1) and windows[1] == (100, 356, 256)


class Oracle:
    """A fake causal LM that puts all probability on the right next token of ``text``."""

    def __init__(self, text: torch.Tensor):
        self.text = text.tolist()
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, input_ids):
        self.calls.append(tuple(input_ids.shape))
        logits = torch.full((*input_ids.shape, VOCAB), -1e4)
        for b, row in enumerate(input_ids.tolist()):
            start = _find(self.text, row)
            for p in range(len(row)):
                if start + p + 1 < len(self.text):
                    logits[b, p, self.text[start + p + 1]] = 1e4
        return SimpleNamespace(logits=logits)


def _find(text: list[int], row: list[int]) -> int:
    return next(i for i in range(len(text)) if text[i : i + len(row)] == row)


def test_a_model_that_is_always_right_has_perplexity_one(ids):
    oracle = Oracle(ids)
    result = perplexity(oracle, ids, seq_len=64, stride=32, batch_size=2, progress=False)
    assert result.perplexity == 1.0 and result.nll == 0.0
    assert result == PerplexityResult(perplexity=1.0, tokens=299, windows=9, nll=0.0)
    assert oracle.calls[0] == (2, 64)  # batched


def test_a_uniform_model_has_perplexity_of_the_vocabulary_size(ids):
    def uniform(input_ids):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, VOCAB))

    assert perplexity(uniform, ids, seq_len=64, progress=False).perplexity == pytest.approx(VOCAB)


def test_restores_training_mode(model, ids):
    model.train()
    try:
        perplexity(model, ids, seq_len=64, max_tokens=100, progress=False)
        assert model.training
    finally:
        model.eval()


def test_tokenize_text_without_special_tokens_and_truncated():
    calls = []

    def tokenizer(text, **kwargs):
        calls.append(kwargs)
        return {"input_ids": [ord(c) for c in text]}

    ids = tokenize_text(tokenizer, "hello world", max_tokens=5)
    assert ids.dtype == torch.long and ids.tolist() == [ord(c) for c in "hello"]
    assert calls[0]["add_special_tokens"] is False
    assert len(tokenize_text(tokenizer, "hello world")) == 11
    with pytest.raises(ValueError, match="empty"):
        tokenize_text(tokenizer, "")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 1}, r"seq_len=1 .*>= 2"),
        ({"seq_len": 64, "stride": 0}, r"stride=0 .*1 <= stride <= seq_len \(64\)"),
        ({"seq_len": 64, "stride": 65}, r"stride=65 .*1 <= stride <= seq_len \(64\)"),
        ({"max_tokens": 0}, r"max_tokens=0"),
        ({"max_tokens": 1}, r"1 token\(s\); at least 2"),
        ({"batch_size": 0}, r"batch_size=0 .*>= 1"),
    ],
)
def test_bad_arguments(model, ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        perplexity(model, ids, progress=False, **kwargs)


def test_bad_input_ids(model):
    with pytest.raises(ValueError, match=r"0 token\(s\)"):
        perplexity(model, torch.tensor([], dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="1-D"):
        perplexity(model, torch.zeros(2, 8, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="1-D"):
        perplexity(model, torch.zeros(8), progress=False)
