"""Request bodies of the OpenAI-compatible API, and their translation to ``SamplingParams``.

Parsing (``Model.model_validate(body)``) checks types only: a body of the wrong shape raises
``pydantic.ValidationError``, which :func:`~ferrule_engine.server.errors.validation_error`
turns into a 422. Unknown fields are ignored, as OpenAI does, and ``null`` means the default.
Values of the right type that are out of range, and known parameters ferrule does not
support (``echo``, ``suffix``, ``best_of != n``, ``logit_bias``, tools, JSON response formats,
images), raise :class:`~ferrule_engine.server.errors.APIError` 400 from
``to_sampling_params`` (and ``prompts`` / ``conversation``), naming the parameter and what
would be valid.

Beyond OpenAI's fields the requests take vLLM's sampling extras (``top_k``, ``min_p``,
``repetition_penalty``, ``stop_token_ids``, ``ignore_eos``, ``min_tokens``, ``priority``,
``skip_special_tokens``, ``include_stop_str_in_output``).
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from ferrule_core.errors import ConfigError
from ferrule_engine.sampling_params import SamplingParams
from ferrule_engine.server.errors import APIError, config_error

MAX_N = 128
MAX_LOGPROBS = 20  # OpenAI allows 5 for completions and 20 for chat; both take up to 20 here


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Request(BaseModel):
    """The fields completions and chat completions share."""

    model_config = ConfigDict(extra="ignore")

    model: str
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0
    frequency_penalty: float = 0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: dict | None = None
    # vLLM's extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    priority: int = 0
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        """``"n": null`` is ``n`` left out (OpenAI documents these as "integer or null")."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            key: value
            for key, value in data.items()
            if not (value is None and key in fields and not _allows_none(fields[key].annotation))
        }

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``"n": true`` is a mistake, not ``n=1`` (pydantic would take it as 1)."""
        if isinstance(value, bool) and _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true or false")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value
        raise ValueError("must be a string or a list of strings, e.g. ['\\n\\n']")

    # --- shared checks -----------------------------------------------------------------

    def _max_tokens(self, value: int | None, name: str, default_max_tokens: int) -> int:
        if value is None:
            return default_max_tokens
        if value < 1:
            raise APIError(
                400, f"{name}={value} is invalid: it must be at least 1, e.g. {name}=16", param=name
            )
        if value > default_max_tokens:
            raise APIError(
                400,
                f"{name}={value} is more than the {default_max_tokens} tokens left in this "
                f"model's context after the prompt; ask for at most {default_max_tokens} or "
                "shorten the prompt",
                param=name,
            )
        return value

    def _sampling_params(self, *, max_tokens: int, logprobs: int | None) -> SamplingParams:
        _check_range("n", self.n, 1, MAX_N)
        if self.temperature is not None:
            _check_range("temperature", self.temperature, 0, 2, note=" (0 = greedy)")
        if self.top_p is not None and not (_finite(self.top_p) and 0 < self.top_p <= 1):
            raise APIError(
                400,
                f"top_p={self.top_p} is out of range: it must be greater than 0 and at most 1 "
                "(1 = off), e.g. top_p=0.9",
                param="top_p",
            )
        _check_range("presence_penalty", self.presence_penalty, -2, 2)
        _check_range("frequency_penalty", self.frequency_penalty, -2, 2)
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400,
                "stream_options is only allowed when stream is true",
                param="stream_options",
            )
        if self.logit_bias:
            _unsupported("logit_bias", "logit_bias is not supported by this server")
        extras = {
            name: value
            for name in ("top_k", "min_p", "repetition_penalty", "stop_token_ids")
            if (value := getattr(self, name)) is not None
        }
        try:
            return SamplingParams(
                n=self.n,
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
                presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty,
                seed=self.seed,
                max_tokens=max_tokens,
                min_tokens=self.min_tokens,
                stop=self.stop,
                ignore_eos=self.ignore_eos,
                logprobs=logprobs,
                include_stop_str_in_output=self.include_stop_str_in_output,
                skip_special_tokens=self.skip_special_tokens,
                **extras,
            )
        except ConfigError as exc:
            raise config_error(exc) from None


class CompletionRequest(_Request):
    """``POST /v1/completions``: one or more prompts, as text or token ids."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            if all(isinstance(p, str) for p in value) or all(_is_int(t) for t in value):
                return value
            if all(isinstance(p, list) and all(_is_int(t) for t in p) for p in value):
                return value
        raise ValueError(
            "must be a string, a list of strings, a list of token ids or a list of lists of "
            "token ids"
        )

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a string or a list of token ids, in request order."""
        prompt = self.prompt
        if isinstance(prompt, str):
            prompts: list[Any] = [prompt]
        elif prompt and all(_is_int(t) for t in prompt):
            prompts = [list(prompt)]
        else:
            prompts = list(prompt)
        if not prompts:
            raise APIError(400, "prompt is empty: give at least one prompt", param="prompt")
        for i, p in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if not p:
                raise APIError(400, f"{where} is empty", param="prompt")
            if not isinstance(p, str) and min(p) < 0:
                raise APIError(
                    400, f"{where} holds the token id {min(p)}; token ids are >= 0", param="prompt"
                )
        return prompts

    def to_sampling_params(self, *, default_max_tokens: int) -> SamplingParams:
        """``default_max_tokens`` is what is left of the context after the prompt."""
        if self.echo:
            _unsupported("echo", "echo is not supported by this server")
        if self.suffix:
            _unsupported("suffix", "suffix (insertion) is not supported by this server")
        if self.best_of is not None and self.best_of != self.n:
            _unsupported(
                "best_of",
                f"best_of={self.best_of} is not supported: leave it out or set it equal to "
                f"n={self.n}",
            )
        if self.logprobs is not None:
            _check_range("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        _check_room(default_max_tokens, "prompt")
        max_tokens = self._max_tokens(self.max_tokens, "max_tokens", default_max_tokens)
        return self._sampling_params(max_tokens=max_tokens, logprobs=self.logprobs)


class ContentPart(BaseModel):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` is served."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(
            isinstance(part, dict)
            and isinstance(part.get("type"), str)
            and (part["type"] != "text" or isinstance(part.get("text"), str))
            for part in value
        ):
            return value
        raise ValueError("must be a string or a list of parts like {'type': 'text', 'text': 'Hi'}")

    def text(self, index: int) -> str:
        """The content as one string (text parts joined by newlines); 400 for other parts."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.type == "text":
                texts.append(part.text or "")
            elif part.type in ("image_url", "input_image", "image"):
                raise APIError(
                    400, "images are not supported by this model", param=f"messages.{index}.content"
                )
            else:
                raise APIError(
                    400,
                    f"content parts of type {part.type!r} are not supported by this model; "
                    "use {'type': 'text', 'text': ...}",
                    param=f"messages.{index}.content",
                )
        return "\n".join(texts)


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``: a conversation rendered by the model's chat template."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict | None = None
    # OpenAI parameters ferrule refuses (400) unless they ask for nothing
    tools: list | None = None
    tool_choice: Any = None
    functions: list | None = None
    function_call: Any = None
    response_format: dict | None = None

    def conversation(self) -> list[dict[str, str]]:
        """``[{"role", "content"}]`` for ``tokenizer.apply_chat_template``.

        ``developer`` messages become ``system`` ones (chat templates know no ``developer``),
        ``name`` is kept when given.
        """
        if not self.messages:
            raise APIError(400, "messages is empty: give at least one message", param="messages")
        conversation = []
        for i, message in enumerate(self.messages):
            role = "system" if message.role == "developer" else message.role
            entry = {"role": role, "content": message.text(i)}
            if message.name is not None:
                entry["name"] = message.name
            conversation.append(entry)
        return conversation

    def to_sampling_params(self, *, default_max_tokens: int) -> SamplingParams:
        """``default_max_tokens`` is what is left of the context after the rendered prompt."""
        self.conversation()  # empty messages and unsupported content parts
        if self.tools:
            _unsupported("tools", "tools (function calling) are not supported by this server")
        if self.functions:
            _unsupported("functions", "functions are not supported by this server")
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none", "auto"):
                _unsupported(name, f"{name} is not supported by this server")
        if self.response_format is not None and self.response_format.get("type") != "text":
            _unsupported(
                "response_format",
                f"response_format of type {self.response_format.get('type')!r} is not "
                "supported by this server; only {'type': 'text'} is",
            )
        logprobs = None
        if self.top_logprobs is not None:
            _check_range("top_logprobs", self.top_logprobs, 0, MAX_LOGPROBS)
            if self.top_logprobs > 0 and not self.logprobs:
                raise APIError(
                    400, "top_logprobs requires logprobs to be true", param="top_logprobs"
                )
        if self.logprobs:
            logprobs = self.top_logprobs or 0
        _check_room(default_max_tokens, "messages")
        if self.max_completion_tokens is not None:
            name, value = "max_completion_tokens", self.max_completion_tokens
        else:
            name, value = "max_tokens", self.max_tokens
        max_tokens = self._max_tokens(value, name, default_max_tokens)
        return self._sampling_params(max_tokens=max_tokens, logprobs=logprobs)


def _check_range(name: str, value: float, low: float, high: float, *, note: str = "") -> None:
    if not (_finite(value) and low <= value <= high):
        raise APIError(
            400,
            f"{name}={value} is out of range: it must be between {low} and {high}{note}",
            param=name,
        )


def _check_room(default_max_tokens: int, param: str) -> None:
    if default_max_tokens < 1:
        what = "prompt" if param == "prompt" else "conversation"
        raise APIError(
            400,
            f"the {what} takes this model's whole context, leaving no room for a completion; "
            f"shorten the {what}",
            param=param,
        )


def _unsupported(name: str, message: str) -> None:
    raise APIError(400, message, param=name, code="unsupported_parameter")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(annotation: Any) -> bool:
    """``int``, ``float`` or either or ``None``."""
    members = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return any(m in (int, float) for m in members)


def _is_union(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin is typing.Union or isinstance(annotation, types.UnionType)


def _allows_none(annotation: Any) -> bool:
    if annotation is None or annotation is Any:
        return True
    return _is_union(annotation) and type(None) in typing.get_args(annotation)
