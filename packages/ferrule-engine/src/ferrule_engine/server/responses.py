"""OpenAI response bodies (plain dicts, ready for JSON) built from :class:`RequestOutput`.

Shapes follow OpenAI's API so that the official client's types (``openai.types.Completion``,
``openai.types.chat.ChatCompletion``, ``ChatCompletionChunk``, ``Model``) parse them. Engine
outputs carry the whole text so far; the chunk builders send only what a client has not seen,
keeping their place per choice in a :class:`StreamState`.

Finish reasons: ``stop`` and ``length`` pass through, ``abort`` is reported as ``stop`` (OpenAI
has no other), ``error`` raises :class:`APIError` 500. Log-probabilities of ``-inf`` are sent
as ``-9999.0``, OpenAI's value for "very unlikely" (JSON has no infinity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ferrule_engine.outputs import CompletionOutput, RequestOutput
from ferrule_engine.server.errors import APIError

_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "stop"}
_MIN_LOGPROB = -9999.0


@dataclass
class _Cursor:
    text: int = 0  # characters of text sent
    tokens: int = 0  # tokens whose logprobs were sent
    offset: int = 0  # text_offset of the next token (completions)
    started: bool = False  # the chat role chunk was sent
    finished: bool = False


@dataclass
class StreamState:
    """What one streamed response has sent so far, per choice index."""

    cursors: dict[int, _Cursor] = field(default_factory=dict)

    def cursor(self, index: int) -> _Cursor:
        return self.cursors.setdefault(index, _Cursor())

    def finished(self, index: int) -> bool:
        """Whether choice ``index`` has sent its ``finish_reason``."""
        return index in self.cursors and self.cursors[index].finished


# --- whole responses -------------------------------------------------------------------


def completion_response(
    request_id: str,
    model: str,
    created: int,
    outputs: Sequence[RequestOutput],
    tokenizer: Any = None,
    want_logprobs: int | None = None,
) -> dict[str, Any]:
    """``text_completion``: one choice per prompt and sample, ``index = prompt_index * n + i``.

    ``outputs`` holds one finished output per prompt, in prompt order; ``want_logprobs`` is the
    request's ``logprobs`` (``tokenizer`` turns token ids into text for them).
    """
    texts = _TokenTexts(tokenizer)
    choices = []
    for prompt_index, output in enumerate(outputs):
        n = len(output.outputs)
        for completion in output.outputs:
            logprobs = None
            if want_logprobs is not None and completion.logprobs is not None:
                logprobs, _ = _completion_logprobs(completion, texts, want_logprobs, 0, 0)
            choices.append(
                {
                    "index": prompt_index * n + completion.index,
                    "text": completion.text,
                    "logprobs": logprobs,
                    "finish_reason": _finish_reason(completion.finish_reason) or "length",
                }
            )
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(outputs),
    }


def chat_response(
    request_id: str,
    model: str,
    created: int,
    output: RequestOutput,
    tokenizer: Any = None,
    want_logprobs: int | None = None,
) -> dict[str, Any]:
    """``chat.completion`` of one conversation; ``want_logprobs`` is ``top_logprobs`` (0 when
    only ``logprobs`` was asked) or ``None``."""
    texts = _TokenTexts(tokenizer)
    choices = []
    for completion in output.outputs:
        logprobs = None
        if want_logprobs is not None and completion.logprobs is not None:
            logprobs = {"content": _chat_logprobs(completion, texts, want_logprobs, 0)}
        choices.append(
            {
                "index": completion.index,
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": logprobs,
                "finish_reason": _finish_reason(completion.finish_reason) or "length",
            }
        )
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage([output]),
    }


def usage(outputs: Sequence[RequestOutput]) -> dict[str, int]:
    """Prompt tokens counted once per prompt, completion tokens over every sample."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def models_response(names: Sequence[str], created: int, max_model_len: int) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "ferrule",
                "max_model_len": max_model_len,
            }
            for name in names
        ],
    }


# --- streaming -------------------------------------------------------------------------


def completion_chunk(
    request_id: str,
    model: str,
    created: int,
    output: RequestOutput,
    state: StreamState,
    *,
    prompt_index: int = 0,
    tokenizer: Any = None,
    want_logprobs: int | None = None,
) -> list[dict[str, Any]]:
    """The ``text_completion`` chunks ``output`` adds since the last call with ``state``:
    one per choice with new text (or new logprobs), the last of a choice with its
    ``finish_reason``. Empty when nothing is new."""
    texts = _TokenTexts(tokenizer)
    chunks = []
    n = len(output.outputs)
    for completion in output.outputs:
        index = prompt_index * n + completion.index
        cursor = state.cursor(index)
        if cursor.finished:
            continue
        delta, reason, start = _advance(cursor, completion, want_logprobs)
        logprobs = None
        if start is not None:
            logprobs, cursor.offset = _completion_logprobs(
                completion, texts, want_logprobs, start, cursor.offset
            )
        elif not delta and reason is None:
            continue
        chunks.append(
            _chunk(
                request_id,
                model,
                created,
                "text_completion",
                {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": reason},
            )
        )
    return chunks


def chat_chunk(
    request_id: str,
    model: str,
    created: int,
    output: RequestOutput,
    state: StreamState,
    *,
    tokenizer: Any = None,
    want_logprobs: int | None = None,
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk``\\ s ``output`` adds since the last call with ``state``.

    A choice's first chunk is ``delta {"role": "assistant", "content": ""}``; then content
    deltas; its last carries ``finish_reason``. Empty when nothing is new.
    """
    texts = _TokenTexts(tokenizer)
    chunks = []
    for completion in output.outputs:
        index = completion.index
        cursor = state.cursor(index)
        if cursor.finished:
            continue
        if not cursor.started:
            cursor.started = True
            chunks.append(
                _chunk(
                    request_id,
                    model,
                    created,
                    "chat.completion.chunk",
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    },
                )
            )
        delta, reason, start = _advance(cursor, completion, want_logprobs)
        logprobs = None
        if start is not None:
            logprobs = {"content": _chat_logprobs(completion, texts, want_logprobs, start)}
        elif not delta and reason is None:
            continue
        chunks.append(
            _chunk(
                request_id,
                model,
                created,
                "chat.completion.chunk",
                {
                    "index": index,
                    "delta": {"content": delta},
                    "logprobs": logprobs,
                    "finish_reason": reason,
                },
            )
        )
    return chunks


def usage_chunk(
    request_id: str,
    model: str,
    created: int,
    outputs: Sequence[RequestOutput],
    *,
    chat: bool = False,
) -> dict[str, Any]:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices, usage."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    chunk = _chunk(request_id, model, created, obj, None)
    chunk["usage"] = usage(outputs)
    return chunk


def _chunk(
    request_id: str, model: str, created: int, obj: str, choice: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [] if choice is None else [choice],
    }


def _advance(
    cursor: _Cursor, completion: CompletionOutput, want_logprobs: int | None
) -> tuple[str, str | None, int | None]:
    """Move ``cursor`` past what ``completion`` adds: the text delta, the finish reason (once),
    and the first token whose logprobs are new (``None`` when there are none to send)."""
    delta = completion.text[cursor.text :]
    cursor.text = len(completion.text)
    reason = _finish_reason(completion.finish_reason)
    cursor.finished = reason is not None
    start = None
    sent = completion.logprobs or []
    if want_logprobs is not None and len(sent) > cursor.tokens:
        start = cursor.tokens
        cursor.tokens = len(sent)
    return delta, reason, start


# --- logprobs --------------------------------------------------------------------------


class _TokenTexts:
    """Token id -> its text (``tokenizer.decode([id])``), memoized."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            if self.tokenizer is None:
                raise ValueError("logprobs were asked for but no tokenizer was given")
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self.cache[token_id] = text
        return text


def _completion_logprobs(
    completion: CompletionOutput, texts: _TokenTexts, k: int, start: int, offset: int
) -> tuple[dict[str, Any], int]:
    """The legacy ``{tokens, token_logprobs, top_logprobs, text_offset}`` of tokens
    ``start:``, offsets counted from ``offset``; also the offset after the last token."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for token_id, entry in _entries(completion, start):
        text = texts(token_id)
        tokens.append(text)
        token_logprobs.append(_clamp(entry[token_id]))
        top: dict[str, float] = {}
        for alt, logprob in _top(entry, k):
            top.setdefault(texts(alt), _clamp(logprob))
        top_logprobs.append(top)
        text_offset.append(offset)
        offset += len(text)
    logprobs = {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }
    return logprobs, offset


def _chat_logprobs(
    completion: CompletionOutput, texts: _TokenTexts, k: int, start: int
) -> list[dict[str, Any]]:
    """``[{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]`` of tokens
    ``start:``."""
    content = []
    for token_id, entry in _entries(completion, start):
        top = [_chat_token(texts(alt), logprob) for alt, logprob in _top(entry, k)]
        content.append({**_chat_token(texts(token_id), entry[token_id]), "top_logprobs": top})
    return content


def _chat_token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": _clamp(logprob), "bytes": list(text.encode("utf-8"))}


def _entries(completion: CompletionOutput, start: int):
    """``(token_id, {token_id: logprob, ...})`` per token from ``start``."""
    logprobs = completion.logprobs or []
    end = min(len(logprobs), len(completion.token_ids))
    return zip(completion.token_ids[start:end], logprobs[start:end], strict=True)


def _top(entry: dict[int, float], k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely of an entry (the sampled token and the top alternatives)."""
    return sorted(entry.items(), key=lambda item: -item[1])[:k]


def _clamp(logprob: float) -> float:
    return max(float(logprob), _MIN_LOGPROB)


def _finish_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    if reason == "error":
        raise APIError(
            500, "the engine failed while generating this completion", type="server_error"
        )
    return _FINISH_REASONS.get(reason, "stop")
