"""Incremental detokenization and stop strings against ``tokenizer.decode`` of all ids at once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ferrule_core.testing import tiny_config, write_tiny_model
from ferrule_engine.detokenizer import IncrementalDetokenizer
from ferrule_engine.sampling_params import SamplingParams
from ferrule_engine.stop import StopMatch, find_stop

QWEN = Path.home() / ".cache/ferrule/models/qwen2.5-coder-0.5b-instruct"
TEXTS = [
    " Hello world, the quick brown fox.",
    "héllo wörld, naïve café, Ångström, e\u0301 (combining)",
    "你好\uff0c世界\uff01日本語のテキスト。한국어",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷 and ❤️",
    "   leading spaces\n\tdef add(a, b):\n        return a + b\n",
    "mixed: 数 😀x é 🇯🇵 end",
]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("tiny"), tiny_config("Qwen2Config"))
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def qwen_tokenizer():
    if not QWEN.is_dir():
        pytest.skip(f"the Qwen2.5 tokenizer is not at {QWEN}")
    return AutoTokenizer.from_pretrained(QWEN)


@pytest.fixture(params=["tiny", "qwen"])
def tokenizer(request):
    return request.getfixturevalue(f"{request.param}_tokenizer")


def _byte_token_ids(tokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte (byte-level BPE alphabet), splitting every character."""
    alphabet = _bytes_to_unicode()
    ids = [tokenizer.convert_tokens_to_ids(alphabet[b]) for b in text.encode()]
    assert tokenizer.unk_token_id not in ids
    return ids


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-character table of byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _stream(tokenizer, ids, params=None, prompt=(1, 2, 3), chunks=None):
    """Feed ``ids`` (one at a time, or in ``chunks``); return the detokenizer and the pieces."""
    detok = IncrementalDetokenizer(tokenizer, list(prompt), params or SamplingParams())
    pieces, i = [], 0
    for size in chunks or [1] * len(ids):
        pieces.append(detok.update(ids[i : i + size]))
        i += size
    pieces.append(detok.flush())
    return detok, pieces


@pytest.mark.parametrize("text", TEXTS)
def test_engine_detok_matches_decode_of_all_ids(tokenizer, text):
    for ids in (tokenizer.encode(text), _byte_token_ids(tokenizer, text)):
        detok, pieces = _stream(tokenizer, ids)
        expected = tokenizer.decode(ids, skip_special_tokens=True)
        assert "".join(pieces) == detok.text == expected
        assert not any("\ufffd" in piece for piece in pieces)  # incomplete bytes held back


def test_engine_detok_random_ids_and_chunks(tokenizer):
    rng = random.Random(0)
    special = tokenizer.all_special_ids
    for trial in range(60):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 25))]
        ids += rng.sample(special, 1) if trial % 3 == 0 else []
        if trial % 2:  # bytes of emoji / CJK, cut anywhere: incomplete characters
            ids += _byte_token_ids(tokenizer, rng.choice(TEXTS))[: rng.randint(1, 12)]
        for skip in (True, False):
            params = SamplingParams(skip_special_tokens=skip)
            sizes = []
            while sum(sizes) < len(ids):
                sizes.append(rng.randint(1, 4))
            for chunks in (None, sizes):
                detok, pieces = _stream(tokenizer, ids, params, chunks=chunks)
                expected = tokenizer.decode(ids, skip_special_tokens=skip)
                assert "".join(pieces) == detok.text == expected, (ids, chunks)


def test_engine_detok_decodes_the_first_token_in_context(qwen_tokenizer):
    tok = qwen_tokenizer
    prompt = tok.encode("The capital of France is")
    ids = tok.encode(" Paris, and 巴黎 😀.")
    detok, pieces = _stream(tok, ids, prompt=prompt)
    assert pieces[0] == " Paris" and detok.text == " Paris, and 巴黎 😀."


def test_engine_detok_stop_token_adds_no_text(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok.encode("The quick brown")
    stop_id = tok.encode(" fox")[0]
    assert tok.decode([stop_id]).strip()  # a token with text
    for include in (False, True):
        params = SamplingParams(include_stop_str_in_output=include)
        detok = IncrementalDetokenizer(tok, [], params)
        detok.update(ids)
        detok.update([stop_id], stop_terminated=True)
        detok.flush()
        assert detok.text == tok.decode(ids + ([stop_id] if include else []))
    assert detok.text != "The quick brown"


# --- stop strings ---------------------------------------------------------------------------


def _reference_cut(full: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    """Naively: the stop string that completes first (the longest on a tie)."""
    for end in range(1, len(full) + 1):
        for stop in sorted(stops, key=len, reverse=True):
            if full[:end].endswith(stop):
                return (full[:end] if include else full[: end - len(stop)]), stop
    return full, None


@pytest.mark.parametrize("include", [False, True])
def test_engine_stop_string_spanning_tokens(tokenizer, include):
    text = "The quick brown fox jumps over the lazy dog 😀 again"
    ids = _byte_token_ids(tokenizer, text)  # every stop string spans several tokens
    for stops in (["fox"], ["lazy", "quick b"], ["dog 😀", "over"], ["😀"], ["nothing"]):
        params = SamplingParams(stop=stops, include_stop_str_in_output=include)
        detok, pieces = _stream(tokenizer, ids, params)
        expected, reason = _reference_cut(tokenizer.decode(ids), stops, include)
        assert detok.text == "".join(pieces) == expected
        assert detok.stop_reason == reason and detok.finished == (reason is not None)


def test_engine_stop_string_random_against_naive_reference(tokenizer):
    rng = random.Random(1)
    words = ["the", "fox", "dog", "é", "世界", "😀", "ab", "abc", "b", "c\n", " ", "bc"]
    for trial in range(80):
        text = "".join(rng.choice(words) for _ in range(rng.randint(2, 14)))
        ids = tokenizer.encode(text) if trial % 2 else _byte_token_ids(tokenizer, text)
        full = tokenizer.decode(ids)
        stops = []
        for _ in range(rng.randint(1, 3)):
            start = rng.randrange(len(full))
            stops.append(full[start : start + rng.randint(1, 5)])
        if trial % 5 == 0:
            stops.append("zzz")  # never found
        include = trial % 3 == 0
        params = SamplingParams(stop=stops, include_stop_str_in_output=include)
        expected, reason = _reference_cut(full, stops, include)
        for chunks in (None, [len(ids)], [2] * len(ids)):
            detok, pieces = _stream(tokenizer, ids, params, chunks=chunks)
            assert (detok.text, detok.stop_reason) == (expected, reason), (text, stops, chunks)
            assert "".join(pieces) == expected


def test_engine_stop_streamed_text_is_never_taken_back(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = _byte_token_ids(tok, "abcabd and more")
    params = SamplingParams(stop=["abd", "xyz"])
    detok = IncrementalDetokenizer(tok, [], params)
    streamed = ""
    for token in ids:
        streamed += detok.update([token])
        assert detok.text.startswith(streamed)
        assert "abd".startswith(streamed[3:]) or len(streamed) <= 3  # "ab" held back
    streamed += detok.flush()
    assert streamed == detok.text == "abc" and detok.stop_reason == "abd"
    assert detok.update(tok.encode(" later")) == "" and detok.text == "abc"


def test_engine_stop_strings_wait_for_min_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = _byte_token_ids(tok, "stop! then stop! end")
    params = SamplingParams(stop=["stop!"], min_tokens=6)  # the first "stop!" ends at token 5
    # (a stop string counts once min_tokens outputs exist, as in vLLM)
    detok, pieces = _stream(tok, ids, params)
    assert detok.text == "".join(pieces) == "stop! then " and detok.stop_reason == "stop!"


def test_engine_stop_find_stop_only_looks_at_new_text():
    assert find_stop("xx fox", ["fox"], new_chars=1) == StopMatch(3, 6, "fox")
    assert find_stop("fox and", ["fox"], new_chars=4) is None  # found earlier already
    assert find_stop("abcd", ["abcd", "bc"], new_chars=4) == StopMatch(1, 3, "bc")
    assert find_stop("abc", ["abc", "bc"], new_chars=1) == StopMatch(0, 3, "abc")
    assert find_stop("abc", [], new_chars=3) is None


def test_engine_stop_first_completed_wins_inside_one_token(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok.encode(" quantized model")
    assert tok.decode(ids[:1]) == " quantiz"  # one token holds both stop strings
    detok, pieces = _stream(tok, ids, SamplingParams(stop=[" quantiz", "ant"]))
    assert (detok.text, detok.stop_reason) == (" qu", "ant") and "".join(pieces) == " qu"
