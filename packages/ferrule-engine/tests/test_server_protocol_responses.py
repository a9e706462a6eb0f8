"""The OpenAI protocol layer, responses: completions, chat, streams and errors, checked
against the official ``openai`` client's types."""

from __future__ import annotations

import json
import math

import openai.types as oa
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ferrule_core.testing import train_tokenizer
from ferrule_engine.outputs import CompletionOutput, RequestOutput
from ferrule_engine.server.errors import APIError
from ferrule_engine.server.responses import (
    StreamState,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    models_response,
    usage_chunk,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(300)


def _entry(token: int, k: int, i: int) -> dict[int, float]:
    """A logprobs entry as the engine makes it: the sampled token first, then the top ``k``.
    Odd positions sample an unlikely token (``k + 1`` entries), even ones the most likely."""
    alternatives = [(token + 1 + j) % 300 for j in range(k)]
    if i % 2:
        entry = {token: -5.0 - i}
        entry.update({a: -0.1 * (j + 1) for j, a in enumerate(alternatives)})
    else:
        entry = {token: -0.05}
        for j, a in enumerate(alternatives[: k - 1]):
            entry[a] = -1.0 - j
    return entry


def _completion(tokenizer, index, ids, *, finish="stop", k=None, length=None):
    """A ``CompletionOutput`` of the first ``length`` of ``ids`` (all when None)."""
    length = len(ids) if length is None else length
    ids = ids[:length]
    logprobs = None if k is None else [_entry(t, k, i) for i, t in enumerate(ids)]
    return CompletionOutput(
        index=index,
        text=tokenizer.decode(ids),
        token_ids=list(ids),
        cumulative_logprob=None,
        logprobs=logprobs,
        finish_reason=finish,
    )


def _request_output(tokenizer, prompt, texts, *, k=None, length=None, finish="stop"):
    ids = [tokenizer.encode(t) for t in texts]
    completions = []
    for i, seq in enumerate(ids):
        done = length is None or length >= len(seq)
        completions.append(
            _completion(tokenizer, i, seq, finish=finish if done else None, k=k, length=length)
        )
    return RequestOutput(
        request_id="r",
        prompt=prompt,
        prompt_token_ids=tokenizer.encode(prompt),
        outputs=completions,
        finished=all(c.finished for c in completions),
    )


def test_engine_server_protocol_completion_response(tokenizer):
    outputs = [
        _request_output(tokenizer, "Hello", [" world", " there fox"], k=2),
        _request_output(tokenizer, "The quick", [" brown", " lazy dog 😀"], k=2, finish="length"),
    ]
    body = completion_response("cmpl-1", "m", 1700000000, outputs, tokenizer, 2)
    parsed = oa.Completion.model_validate(json.loads(json.dumps(body)))
    assert [c.index for c in parsed.choices] == [0, 1, 2, 3]
    assert [c.text for c in parsed.choices] == [" world", " there fox", " brown", " lazy dog 😀"]
    assert [c.finish_reason for c in parsed.choices] == ["stop", "stop", "length", "length"]
    prompt_tokens = len(tokenizer.encode("Hello")) + len(tokenizer.encode("The quick"))
    completion_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    assert parsed.usage.prompt_tokens == prompt_tokens
    assert parsed.usage.completion_tokens == completion_tokens
    assert parsed.usage.total_tokens == prompt_tokens + completion_tokens
    choice = parsed.choices[1]
    ids = outputs[0].outputs[1].token_ids
    logprobs = choice.logprobs
    assert logprobs.tokens == [tokenizer.decode([t]) for t in ids]
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.token_logprobs == [_entry(t, 2, i)[t] for i, t in enumerate(ids)]
    offsets = [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(ids))]
    assert logprobs.text_offset == offsets
    for i, (t, top) in enumerate(zip(ids, logprobs.top_logprobs, strict=True)):
        assert len(top) == 2
        best = sorted(_entry(t, 2, i).items(), key=lambda kv: -kv[1])[:2]
        assert list(top.values()) == [lp for _, lp in best]
    no_logprobs = completion_response("cmpl-1", "m", 1, outputs)
    assert all(c["logprobs"] is None for c in no_logprobs["choices"])


def test_engine_server_protocol_chat_response(tokenizer):
    output = _request_output(tokenizer, "Hi", ["Hello world 😀", "Hey"], k=3)
    output.outputs[1].logprobs[0] = {output.outputs[1].token_ids[0]: -math.inf, 5: -0.2}
    body = chat_response("chatcmpl-1", "m", 1700000000, output, tokenizer, 3)
    parsed = ChatCompletion.model_validate(json.loads(json.dumps(body)))
    assert parsed.object == "chat.completion"
    assert [c.message.content for c in parsed.choices] == ["Hello world 😀", "Hey"]
    assert all(c.message.role == "assistant" for c in parsed.choices)
    content = parsed.choices[0].logprobs.content
    assert len(content) == len(output.outputs[0].token_ids)
    assert b"".join(bytes(t.bytes) for t in content[:-4]) == b"Hello world "
    assert all(len(t.top_logprobs) == 3 for t in content)
    assert all(
        [a.logprob for a in t.top_logprobs] == sorted([a.logprob for a in t.top_logprobs])[::-1]
        for t in content
    )
    first = parsed.choices[1].logprobs.content[0]
    assert first.logprob == -9999.0 and [a.logprob for a in first.top_logprobs] == [-0.2, -9999.0]
    assert parsed.usage.completion_tokens == sum(len(c.token_ids) for c in output.outputs)
    plain = chat_response("chatcmpl-1", "m", 1, output)
    assert plain["choices"][0]["logprobs"] is None
    only_sampled = chat_response("chatcmpl-1", "m", 1, output, tokenizer, 0)
    assert only_sampled["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []


def _stream_outputs(tokenizer, texts, k=None):
    """Successive engine outputs of one request, one token more each time."""
    longest = max(len(tokenizer.encode(t)) for t in texts)
    return [
        _request_output(tokenizer, "Hi", texts, k=k, length=length)
        for length in range(1, longest + 1)
    ]


def test_engine_server_protocol_chat_stream(tokenizer):
    texts = ["Hello world, the fox", "Hey there"]
    state = StreamState()
    chunks = []
    for output in _stream_outputs(tokenizer, texts, k=1):
        chunks += chat_chunk(
            "chatcmpl-1", "m", 1, output, state, tokenizer=tokenizer, want_logprobs=1
        )
    assert chat_chunk("chatcmpl-1", "m", 1, output, state, tokenizer=tokenizer) == []
    parsed = [ChatCompletionChunk.model_validate(json.loads(json.dumps(c))) for c in chunks]
    for index, text in enumerate(texts):
        mine = [p.choices[0] for p in parsed if p.choices[0].index == index]
        assert mine[0].delta.role == "assistant" and mine[0].delta.content == ""
        assert all(c.delta.role is None for c in mine[1:])
        assert "".join(c.delta.content for c in mine) == text
        assert [c.finish_reason for c in mine] == [None] * (len(mine) - 1) + ["stop"]
        tokens = [t for c in mine[1:] for t in c.logprobs.content]
        assert [t.token for t in tokens] == [tokenizer.decode([i]) for i in tokenizer.encode(text)]
    usage = usage_chunk("chatcmpl-1", "m", 1, [output], chat=True)
    parsed_usage = ChatCompletionChunk.model_validate(usage)
    assert parsed_usage.choices == [] and parsed_usage.usage.completion_tokens == sum(
        len(tokenizer.encode(t)) for t in texts
    )


def test_engine_server_protocol_completion_stream(tokenizer):
    prompts = [["Hello world", "the quick"], ["brown fox"]]  # n = 2 per prompt
    prompts[1].append("lazy")
    state = StreamState()
    chunks = []
    full = []
    for prompt_index, texts in enumerate(prompts):
        for output in _stream_outputs(tokenizer, texts, k=2):
            chunks += completion_chunk(
                "cmpl-1",
                "m",
                1,
                output,
                state,
                prompt_index=prompt_index,
                tokenizer=tokenizer,
                want_logprobs=2,
            )
        full.append(output)
    response = completion_response("cmpl-1", "m", 1, full, tokenizer, 2)
    for chunk in chunks:
        (choice,) = chunk["choices"]
        if choice["finish_reason"] is None:
            # openai's type marks finish_reason required, though the API streams null until
            # the last chunk (the client does not validate chunks)
            choice = {**choice, "finish_reason": "stop"}
        oa.Completion.model_validate({**chunk, "choices": [choice]})
    for expected in response["choices"]:
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == expected["index"]]
        assert "".join(c["text"] for c in mine) == expected["text"]
        assert [c["finish_reason"] for c in mine][-1] == "stop"
        assert all(c["finish_reason"] is None for c in mine[:-1])
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            streamed = [x for c in mine for x in c["logprobs"][key]]
            assert streamed == expected["logprobs"][key], key
    assert state.finished(3) and not state.finished(4)
    oa.Completion.model_validate(usage_chunk("cmpl-1", "m", 1, full))


def test_engine_server_protocol_stream_skips_empty_deltas(tokenizer):
    output = _request_output(tokenizer, "Hi", ["Hello"], length=1)
    state = StreamState()
    first = completion_chunk("c", "m", 1, output, state)
    assert len(first) == 1 and first[0]["choices"][0]["text"] == output.outputs[0].text
    assert completion_chunk("c", "m", 1, output, state) == []  # nothing new, no logprobs asked
    output.outputs[0].finish_reason = "abort"
    (last,) = completion_chunk("c", "m", 1, output, state)
    assert last["choices"][0] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}


def test_engine_server_protocol_engine_error_is_500(tokenizer):
    output = _request_output(tokenizer, "Hi", ["Hello"], finish="error")
    with pytest.raises(APIError) as info:
        completion_response("c", "m", 1, [output])
    assert info.value.status == 500 and info.value.body()["error"]["type"] == "server_error"


def test_engine_server_protocol_models_response():
    body = models_response(["qwen", "qwen-lora"], 1700000000, 4096)
    assert body["object"] == "list"
    models = [oa.Model.model_validate(m) for m in body["data"]]
    assert [m.id for m in models] == ["qwen", "qwen-lora"]
    assert all(m.owned_by == "ferrule" and m.object == "model" for m in models)
    assert all(m.model_extra["max_model_len"] == 4096 for m in models)
