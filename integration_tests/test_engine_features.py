"""The engine through ``ferrule.LLM`` on a tiny Llama folder: prefix caching, ``n > 1``,
seeds, stops, logprobs, aborts, chat, priorities and bad input."""

from __future__ import annotations

import pytest

from ferrule import LLM, ConfigError, SamplingParams

BLOCK = 4


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(tiny_llama_dir, dtype="float32", block_size=BLOCK, num_kv_blocks=128)


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)


PREFIX = list(range(10, 74))  # 64 tokens: 16 full blocks


def test_a_shared_prefix_hits_the_cache_and_changes_nothing(tiny_llama_dir):
    cached = LLM(tiny_llama_dir, dtype="float32", block_size=BLOCK, num_kv_blocks=128)
    plain = LLM(
        tiny_llama_dir,
        dtype="float32",
        block_size=BLOCK,
        num_kv_blocks=128,
        enable_prefix_caching=False,
    )
    prompts = [[*PREFIX, 5, 6, 7], [*PREFIX, 8, 9], [*PREFIX, 5, 6, 7]]
    first = cached.generate([prompts[0]], greedy(6))[0]
    assert first.metrics.num_cached_tokens == 0
    later = cached.generate(prompts[1:], greedy(6))
    assert later[0].metrics.num_cached_tokens == len(PREFIX)
    # the identical prompt hits every full block but the one holding its last token
    assert later[1].metrics.num_cached_tokens == (len(prompts[2]) - 1) // BLOCK * BLOCK
    stats = cached.engine.prefix_cache_stats()
    assert stats["hits"] >= 2 * len(PREFIX) and 0 < stats["hit_rate"] < 1
    expected = plain.generate(prompts, greedy(6))
    assert [o.outputs[0].token_ids for o in [first, *later]] == [
        o.outputs[0].token_ids for o in expected
    ]
    assert plain.engine.prefix_cache_stats()["hits"] == 0


def test_n_samples_share_the_prompt_blocks_and_are_reproducible(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=5, ignore_eos=True)
    before = llm.engine.prefix_cache_stats()["hits"]
    out = llm.generate([PREFIX[:33]], params)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 5 for c in out.outputs)
    # siblings 2 and 3 reuse the 8 full blocks the first one is computing in the same step
    assert llm.engine.prefix_cache_stats()["hits"] - before >= 2 * 32
    again = llm.generate([PREFIX[:33]], params)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1, "different seeds per sample"


def test_a_seeded_request_samples_the_same_alone_and_in_a_batch(llm):
    seeded = SamplingParams(temperature=0.9, top_p=0.9, seed=123, max_tokens=8, ignore_eos=True)
    alone = llm.generate([[3, 4, 5, 6]], seeded)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.2, max_tokens=8, ignore_eos=True)
    batch = llm.generate([[9, 9, 9], [3, 4, 5, 6], [7, 8]], [others, seeded, others])
    assert batch[1].outputs[0].token_ids == alone


def test_stop_strings_and_stop_token_ids(llm):
    base = llm.generate([[20, 21, 22]], greedy(12))[0].outputs[0]
    assert len(base.text) > 4
    stop = base.text[2:4]
    cut = llm.generate([[20, 21, 22]], greedy(12, stop=[stop]))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == base.text[: base.text.index(stop)]
    kept = llm.generate([[20, 21, 22]], greedy(12, stop=[stop], include_stop_str_in_output=True))
    assert kept[0].outputs[0].text == base.text[: base.text.index(stop) + len(stop)]

    token = base.token_ids[3]
    first = base.token_ids.index(token)
    ended = llm.generate([[20, 21, 22]], greedy(12, stop_token_ids=[token]))[0].outputs[0]
    assert ended.finish_reason == "stop" and ended.stop_reason == token
    assert ended.token_ids == base.token_ids[: first + 1]
    tokenizer = llm.get_tokenizer()
    assert ended.text == tokenizer.decode(base.token_ids[:first])


def test_length_and_min_tokens(llm):
    out = llm.generate([[1, 2, 3]], greedy(7))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 7


def test_logprobs_are_those_of_the_raw_distribution(llm):
    out = llm.generate([[30, 31]], greedy(4, logprobs=3))[0].outputs[0]
    assert len(out.logprobs) == 4
    total = 0.0
    for token, step in zip(out.token_ids, out.logprobs, strict=True):
        assert token in step and len(step) >= 3
        assert step[token] == max(step.values())  # greedy picks the most likely token
        assert all(v <= 0 for v in step.values())
        total += step[token]
    assert out.cumulative_logprob == pytest.approx(total)


def test_abort_frees_every_block(llm):
    engine = llm.engine
    free = engine.scheduler.kv_manager.num_free_blocks
    engine.add_request("a", list(range(5, 45)), greedy(50))
    engine.add_request("b", list(range(5, 25)), greedy(50))
    engine.step()
    assert engine.scheduler.kv_manager.num_free_blocks < free
    engine.abort_request(["a", "b"])
    outputs = {o.request_id: o for o in engine.step()}
    assert {r: o.outputs[0].finish_reason for r, o in outputs.items()} == {
        "a": "abort",
        "b": "abort",
    }
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.kv_manager.num_free_blocks == free


def test_chat_renders_the_template(llm):
    tokenizer = llm.get_tokenizer()
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        with pytest.raises(ValueError, match="no chat template"):
            llm.chat([{"role": "user", "content": "hi"}])
        tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        messages = [{"role": "user", "content": "The quick brown fox"}]
        out = llm.chat(messages, greedy(3))[0]
        assert out.prompt_token_ids == tokenizer("<user>The quick brown fox").input_ids
    finally:
        tokenizer.chat_template = template


def test_priority_policy_serves_every_request_the_same(tiny_llama_dir, llm):
    ranked = LLM(
        tiny_llama_dir,
        dtype="float32",
        block_size=BLOCK,
        num_kv_blocks=40,
        scheduling_policy="priority",
    )
    prompts = [list(range(k, k + 20)) for k in range(5, 45, 8)]
    out = ranked.generate(prompts, greedy(6), priority=[3, 0, 2, 1, 0])
    expected = llm.generate(prompts, greedy(6))
    assert [o.outputs[0].token_ids for o in out] == [o.outputs[0].token_ids for o in expected]


def test_bad_input_is_refused_with_a_clear_message(llm):
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([[1] * 600], greedy(2))
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], greedy(2))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([[10**6]], greedy(2))
    with pytest.raises(ConfigError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ConfigError, match="block_size"):
        LLM("unused", block_size=3)
    assert not llm.engine.has_unfinished_requests()


def test_min_tokens_keeps_stop_tokens_out_of_the_first_outputs(llm):
    base = llm.generate([[40, 41, 42]], greedy(6))[0].outputs[0].token_ids
    stop = base[0]  # greedy would stop at once on it
    ended = llm.generate([[40, 41, 42]], greedy(6, stop_token_ids=[stop]))[0].outputs[0]
    assert ended.token_ids == [stop] and ended.finish_reason == "stop"
    held = llm.generate([[40, 41, 42]], greedy(6, stop_token_ids=[stop], min_tokens=3))[0]
    tokens = held.outputs[0].token_ids
    assert len(tokens) >= 3 and stop not in tokens[:3]
