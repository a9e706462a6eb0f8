"""Calibration data: sources, the token stream, seeded windows."""

from __future__ import annotations

import json

import pytest
import torch

from ferrule_core.testing import train_tokenizer
from ferrule_quant.calibration import (
    calibration_ids,
    fingerprint,
    load_texts,
    sample_windows,
    stdlib_docstrings,
    token_stream,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(320)


def test_sources(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("one document\nwith two lines")
    assert load_texts(text) == ["one document\nwith two lines"]
    assert load_texts(str(text)) == ["one document\nwith two lines"]
    lines = tmp_path / "data.jsonl"
    lines.write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps("second") + "\n")
    assert load_texts(lines) == ["first", "second"]
    assert load_texts(["a", "b"]) == ["a", "b"]


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.txt does not exist"):
        load_texts(tmp_path / "missing.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*'text' field"):
        load_texts(bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a JSON line"):
        load_texts(bad)
    with pytest.raises(TypeError, match="must all be strings"):
        load_texts(["fine", 3])


def test_the_default_needs_no_network_and_is_real_prose():
    texts = stdlib_docstrings()
    assert len(texts) > 50
    assert sum(map(len, texts)) > 200_000
    assert load_texts(None) == texts


def test_stream_joins_documents_with_end_of_text(tokenizer):
    stream = token_stream(tokenizer, ["hello world", "quantized model"])
    eos = tokenizer.eos_token_id
    assert (stream == eos).sum() == 1
    first = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    assert stream[: len(first)].tolist() == first


def test_windows_are_seeded_equal_length_slices():
    stream = torch.arange(1000)
    a = sample_windows(stream, 8, 64, seed=1)
    assert a.shape == (8, 64)
    assert torch.equal(a, sample_windows(stream, 8, 64, seed=1))
    assert not torch.equal(a, sample_windows(stream, 8, 64, seed=2))
    assert all(torch.equal(row, torch.arange(row[0], row[0] + 64)) for row in a)
    assert fingerprint(a) == fingerprint(a.clone()) != fingerprint(a + 1)


def test_window_errors_name_the_value():
    with pytest.raises(ValueError, match="num_samples=0"):
        sample_windows(torch.arange(100), 0, 10)
    with pytest.raises(ValueError, match="seq_len=1"):
        sample_windows(torch.arange(100), 1, 1)
    with pytest.raises(ValueError, match="has 100 tokens, fewer than seq_len=512"):
        sample_windows(torch.arange(100), 1, 512)


def test_calibration_ids_from_strings(tokenizer):
    ids = calibration_ids(tokenizer, ["the quick brown fox " * 50], num_samples=4, seq_len=16)
    assert ids.shape == (4, 16) and ids.dtype == torch.long
