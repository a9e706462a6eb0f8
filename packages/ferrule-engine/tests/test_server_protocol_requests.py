"""The OpenAI protocol layer, requests: validation (status, parameter, message of every
refusal), what OpenAI accepts, and the sampling parameters a request becomes."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from ferrule_engine.sampling_params import SamplingParams
from ferrule_engine.server.errors import APIError, validation_error
from ferrule_engine.server.protocol import ChatCompletionRequest, CompletionRequest

C = {"model": "m", "prompt": "Hello"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def _check(kind: str, payload, default_max_tokens: int = 100) -> APIError | None:
    """Parse, normalise and convert ``payload`` as the server does; the error, if any."""
    cls = CompletionRequest if kind == "completion" else ChatCompletionRequest
    try:
        request = cls.model_validate(payload)
        if kind == "completion":
            request.prompts()
        else:
            request.conversation()
        request.to_sampling_params(default_max_tokens=default_max_tokens)
    except ValidationError as exc:
        return validation_error(exc)
    except APIError as exc:
        return exc
    return None


def _chat_message(**fields):
    return {**CHAT, "messages": [{"role": "user", **fields}]}


BAD_REQUESTS = [
    # (kind, payload, default_max_tokens, status, param, message fragment)
    ("completion", {"prompt": "x"}, 100, 422, "model", "required"),
    ("completion", {"model": "m"}, 100, 422, "prompt", "required"),
    ("completion", ["not", "a", "dict"], 100, 422, None, "valid dictionary"),
    ("completion", {**C, "prompt": [1, "a"]}, 100, 422, "prompt", "list of token ids"),
    ("completion", {**C, "prompt": 5}, 100, 422, "prompt", "must be a string"),
    ("completion", {**C, "prompt": ""}, 100, 400, "prompt", "prompt is empty"),
    ("completion", {**C, "prompt": []}, 100, 400, "prompt", "at least one prompt"),
    ("completion", {**C, "prompt": [[1, 2], []]}, 100, 400, "prompt", "prompt[1] is empty"),
    ("completion", {**C, "prompt": [5, -1]}, 100, 400, "prompt", "token id -1"),
    ("completion", {**C, "max_tokens": -1}, 100, 400, "max_tokens", "at least 1"),
    ("completion", {**C, "max_tokens": 0}, 100, 400, "max_tokens", "max_tokens=0"),
    ("completion", {**C, "max_tokens": 1000}, 100, 400, "max_tokens", "100 tokens left"),
    ("completion", {**C, "max_tokens": "ten"}, 100, 422, "max_tokens", '"ten"'),
    ("completion", C, 0, 400, "prompt", "whole context"),
    ("completion", {**C, "n": 0}, 100, 400, "n", "between 1 and 128"),
    ("completion", {**C, "n": 129}, 100, 400, "n", "n=129"),
    ("completion", {**C, "n": True}, 100, 422, "n", "not true or false"),
    ("completion", {**C, "n": 1.5}, 100, 422, "n", "integer"),
    ("completion", {**C, "temperature": 2.5}, 100, 400, "temperature", "between 0 and 2"),
    ("completion", {**C, "temperature": -0.1}, 100, 400, "temperature", "temperature=-0.1"),
    ("completion", {**C, "temperature": math.nan}, 100, 400, "temperature", "out of range"),
    ("completion", {**C, "temperature": "hot"}, 100, 422, "temperature", "number"),
    ("completion", {**C, "top_p": 0}, 100, 400, "top_p", "greater than 0 and at most 1"),
    ("completion", {**C, "top_p": 1.5}, 100, 400, "top_p", "top_p=1.5"),
    ("completion", {**C, "presence_penalty": 3}, 100, 400, "presence_penalty", "-2 and 2"),
    ("completion", {**C, "frequency_penalty": -2.5}, 100, 400, "frequency_penalty", "-2 and 2"),
    ("completion", {**C, "logprobs": 21}, 100, 400, "logprobs", "between 0 and 20"),
    ("completion", {**C, "logprobs": -1}, 100, 400, "logprobs", "logprobs=-1"),
    ("completion", {**C, "echo": True}, 100, 400, "echo", "echo is not supported"),
    ("completion", {**C, "suffix": "}"}, 100, 400, "suffix", "not supported"),
    ("completion", {**C, "best_of": 3}, 100, 400, "best_of", "equal to n=1"),
    ("completion", {**C, "logit_bias": {"50": -100}}, 100, 400, "logit_bias", "not supported"),
    ("completion", {**C, "stop": ["ok", ""]}, 100, 400, "stop", "non-empty"),
    ("completion", {**C, "stop": [1]}, 100, 422, "stop", "list of strings"),
    ("completion", {**C, "top_k": -5}, 100, 400, "top_k", "top_k=-5"),
    ("completion", {**C, "min_p": 1.5}, 100, 400, "min_p", "[0, 1]"),
    ("completion", {**C, "repetition_penalty": 0}, 100, 400, "repetition_penalty", "> 0"),
    ("completion", {**C, "max_tokens": 10, "min_tokens": 50}, 100, 400, "min_tokens", "exceed"),
    ("completion", {**C, "seed": 2**64}, 100, 400, "seed", "2**64"),
    ("completion", {**C, "stop_token_ids": [-1]}, 100, 400, "stop_token_ids", ">= 0"),
    ("completion", {**C, "stream_options": {}}, 100, 400, "stream_options", "stream is true"),
    ("chat", {"model": "m"}, 100, 422, "messages", "required"),
    ("chat", {**CHAT, "messages": []}, 100, 400, "messages", "at least one message"),
    ("chat", {**CHAT, "messages": [{"role": "bot"}]}, 100, 422, "messages.0.role", "'user'"),
    ("chat", {**CHAT, "messages": [{"content": "x"}]}, 100, 422, "messages.0.role", "required"),
    ("chat", _chat_message(content=5), 100, 422, "messages.0.content", "list of parts"),
    (
        "chat",
        _chat_message(content=[{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]),
        100,
        400,
        "messages.0.content",
        "images are not supported by this model",
    ),
    (
        "chat",
        _chat_message(content=[{"type": "input_audio", "input_audio": {}}]),
        100,
        400,
        "messages.0.content",
        "'input_audio' are not supported",
    ),
    ("chat", _chat_message(content=[{"type": "text"}]), 100, 422, "messages.0.content", "parts"),
    ("chat", {**CHAT, "top_logprobs": 3}, 100, 400, "top_logprobs", "requires logprobs"),
    ("chat", {**CHAT, "logprobs": True, "top_logprobs": 21}, 100, 400, "top_logprobs", "20"),
    ("chat", {**CHAT, "tools": [{"type": "function"}]}, 100, 400, "tools", "not supported"),
    ("chat", {**CHAT, "tool_choice": "required"}, 100, 400, "tool_choice", "not supported"),
    ("chat", {**CHAT, "functions": [{"name": "f"}]}, 100, 400, "functions", "not supported"),
    (
        "chat",
        {**CHAT, "response_format": {"type": "json_object"}},
        100,
        400,
        "response_format",
        "'json_object'",
    ),
    ("chat", {**CHAT, "logit_bias": {"1": 5}}, 100, 400, "logit_bias", "not supported"),
    (
        "chat",
        {**CHAT, "max_completion_tokens": -1, "max_tokens": 5},
        100,
        400,
        "max_completion_tokens",
        "at least 1",
    ),
    ("chat", {**CHAT, "max_tokens": 500}, 100, 400, "max_tokens", "at most 100"),
    ("chat", CHAT, -3, 400, "messages", "shorten the conversation"),
    ("chat", {**CHAT, "n": 200}, 100, 400, "n", "between 1 and 128"),
    ("chat", {**CHAT, "temperature": 3}, 100, 400, "temperature", "(0 = greedy)"),
]


@pytest.mark.parametrize(
    ("kind", "payload", "room", "status", "param", "fragment"),
    BAD_REQUESTS,
    ids=[f"{row[0]}-{i}-{row[4]}" for i, row in enumerate(BAD_REQUESTS)],
)
def test_engine_server_protocol_rejects_bad_requests(kind, payload, room, status, param, fragment):
    error = _check(kind, payload, room)
    assert error is not None, f"{payload} was accepted"
    assert error.status == status, error
    assert error.param == param, error
    assert fragment in error.message, error
    body = error.body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    json.dumps(body)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("completion", {**C, "n": None, "stream": None, "presence_penalty": None, "extra": 1}),
        ("completion", {**C, "prompt": [[1, 2], [3]], "best_of": 1, "logprobs": 20}),
        ("completion", {**C, "stream": True, "stream_options": {"include_usage": True}}),
        ("completion", {**C, "suffix": "", "logit_bias": {}, "max_tokens": None}),
        ("chat", {**CHAT, "top_logprobs": 0, "response_format": {"type": "text"}}),
        ("chat", {**CHAT, "tool_choice": "none", "tools": [], "logprobs": None}),
        ("chat", {**CHAT, "messages": [{"role": "assistant", "content": None, "tool_calls": []}]}),
        ("chat", {**CHAT, "max_completion_tokens": 100, "max_tokens": 500}),
    ],
)
def test_engine_server_protocol_accepts_what_openai_accepts(kind, payload):
    assert _check(kind, payload) is None


def test_engine_server_protocol_validation_error_strips_fastapi_body_prefix():
    from fastapi.exceptions import RequestValidationError

    exc = RequestValidationError(
        [
            {"loc": ("body", "n"), "msg": "Input should be a valid integer", "type": "int_type"},
            {"loc": ("body", "n"), "msg": "Input should be a valid integer", "type": "int_type"},
            {"loc": ("body", "model"), "msg": "Field required", "type": "missing"},
        ]
    )
    error = validation_error(exc)
    assert error.status == 422 and error.param == "n"
    assert error.message == "n: Input should be a valid integer; model: this field is required"


def test_engine_server_protocol_sampling_params_round_trip():
    extras = {
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "stop_token_ids": [7, 9],
        "ignore_eos": True,
        "min_tokens": 3,
        "skip_special_tokens": False,
        "include_stop_str_in_output": True,
    }
    common = {
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": "\n\n",
        "seed": 1234,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        **extras,
    }
    expected = SamplingParams(
        **{**common, "stop": ["\n\n"]}, max_tokens=32, logprobs=4
    )  # what both requests mean
    request = CompletionRequest.model_validate({**C, **common, "max_tokens": 32, "logprobs": 4})
    assert request.to_sampling_params(default_max_tokens=100) == expected
    assert request.priority == 0
    chat = ChatCompletionRequest.model_validate(
        {**CHAT, **common, "max_tokens": 32, "logprobs": True, "top_logprobs": 4, "priority": -2}
    )
    assert chat.to_sampling_params(default_max_tokens=100) == expected
    assert chat.priority == -2


def test_engine_server_protocol_defaults():
    params = CompletionRequest.model_validate(C).to_sampling_params(default_max_tokens=100)
    assert (params.temperature, params.top_p, params.max_tokens, params.logprobs) == (
        1.0,
        1.0,
        16,
        None,
    )
    params = CompletionRequest.model_validate({**C, "max_tokens": None, "temperature": None})
    assert params.to_sampling_params(default_max_tokens=77).max_tokens == 77
    chat = ChatCompletionRequest.model_validate(CHAT)
    params = chat.to_sampling_params(default_max_tokens=55)
    assert (params.max_tokens, params.logprobs, params.n, params.temperature) == (55, None, 1, 1.0)
    assert not chat.stream and chat.add_generation_prompt and chat.stream_options is None
    chat = ChatCompletionRequest.model_validate({**CHAT, "logprobs": True})
    assert chat.to_sampling_params(default_max_tokens=55).logprobs == 0
    chat = ChatCompletionRequest.model_validate(
        {**CHAT, "max_completion_tokens": 9, "max_tokens": 50}
    )
    assert chat.to_sampling_params(default_max_tokens=55).max_tokens == 9
    chat = ChatCompletionRequest.model_validate({**CHAT, "temperature": 0})
    assert chat.to_sampling_params(default_max_tokens=55).greedy


def test_engine_server_protocol_prompts_are_normalised():
    def prompts(prompt):
        return CompletionRequest.model_validate({**C, "prompt": prompt}).prompts()

    assert prompts("a b") == ["a b"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert prompts([1, 2, 3]) == [[1, 2, 3]]
    assert prompts([[1, 2], [3]]) == [[1, 2], [3]]


def test_engine_server_protocol_conversation():
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Hi"}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
                },
                {"role": "assistant", "content": None},
            ],
            "chat_template_kwargs": {"enable_thinking": False},
        }
    )
    assert request.conversation() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "user", "content": "one\ntwo"},
        {"role": "assistant", "content": ""},
    ]
    assert request.chat_template_kwargs == {"enable_thinking": False}


# --- responses -------------------------------------------------------------------------
