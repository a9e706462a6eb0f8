"""The OpenAI-compatible HTTP server: FastAPI routes over an :class:`AsyncLLM`.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (non-streaming, or SSE chunks
ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health``, ``GET /metrics``,
``POST /tokenize``, ``POST /detokenize``. Every error is an OpenAI-style body
``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status; bodies are read
by hand (size limit, UTF-8, JSON) so that each kind of bad input gets its own answer.
A client that goes away aborts its request: streaming responses are cancelled by the
server, non-streaming ones are watched for a disconnect while they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from ferrule_engine.async_llm import AsyncLLM
from ferrule_engine.server import responses
from ferrule_engine.server.errors import APIError, validation_error
from ferrule_engine.server.metrics import CONTENT_TYPE, ServerMetrics
from ferrule_engine.server.protocol import ChatCompletionRequest, CompletionRequest
from ferrule_engine.server.streaming import (
    chat_chunks,
    chat_logprobs,
    completion_chunks,
    first_event,
    last,
    sse,
)

logger = logging.getLogger("ferrule.server")
T = TypeVar("T")
MAX_BODY_BYTES = 4 << 20
DISCONNECT_POLL_SECONDS = 0.25
UNPROTECTED = ("/health",)


def build_app(
    llm: AsyncLLM,
    *,
    served_model_name: str,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    shutdown_timeout: float = 10.0,
) -> FastAPI:
    """The app; on shutdown it lets in-flight requests finish for ``shutdown_timeout``
    seconds, then aborts the rest."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await llm.shutdown(timeout=shutdown_timeout)

    app = FastAPI(
        title="ferrule", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    metrics = ServerMetrics(llm.stats)
    created = int(time.time())
    app.state.llm = llm

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            if api_key is not None and request.url.path not in UNPROTECTED:
                _check_key(request, api_key)
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
                raise _too_large(max_body_bytes)
            return await call_next(request)
        except APIError as err:
            return _error_response(err, metrics)

    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError):
        return _error_response(err, metrics)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception):
        logger.exception("unexpected error while serving a request")
        return _error_response(
            APIError(500, f"internal error: {err}", type="server_error"), metrics
        )

    @app.get("/health")
    async def health():
        if not llm.is_alive():
            raise APIError(503, "the engine is not running", type="service_unavailable")
        return {}

    @app.get("/v1/models")
    async def models():
        return responses.models_response([served_model_name], created, llm.max_model_len)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await _json_body(request, max_body_bytes)
        tokenizer = llm.tokenizer
        if "messages" in body:
            chat = _parse(ChatCompletionRequest, {"model": served_model_name, **body})
            ids = _chat_ids(tokenizer, chat)
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise APIError(
                    422, "'prompt' must be a string (or give 'messages')", param="prompt"
                )
            special = body.get("add_special_tokens", True)
            ids = tokenizer(prompt, add_special_tokens=bool(special)).input_ids
        return {"tokens": ids, "count": len(ids), "max_model_len": llm.max_model_len}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await _json_body(request, max_body_bytes)
        tokens = body.get("tokens")
        vocab = len(llm.tokenizer)
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise APIError(422, "'tokens' must be a list of integers", param="tokens")
        bad = [t for t in tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token ids {bad[:5]} are outside [0, {vocab})", param="tokens")
        return {"prompt": llm.tokenizer.decode(tokens)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json_body(request, max_body_bytes)
        req = _parse(CompletionRequest, body)
        _check_model(req.model, served_model_name)
        prompts = [_prompt_ids(llm, p) for p in req.prompts()]
        params = [req.to_sampling_params(default_max_tokens=_room(llm, ids)) for _, ids in prompts]
        base = f"cmpl-{uuid.uuid4().hex}"
        ids = [f"{base}-{i}" for i in range(len(prompts))]
        streams = [
            llm.generate(ids_or_text, p, rid, priority=req.priority)
            for (ids_or_text, _), p, rid in zip(prompts, params, ids, strict=True)
        ]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = completion_chunks(streams, base, req, include_usage, metrics, llm.tokenizer)
            return sse(await first_event(chunks), chunks)
        finals = await _watch(request, asyncio.gather(*(last(s, metrics) for s in streams)))
        return responses.completion_response(
            base, req.model, int(time.time()), finals, llm.tokenizer, req.logprobs
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _json_body(request, max_body_bytes)
        req = _parse(ChatCompletionRequest, body)
        _check_model(req.model, served_model_name)
        ids = _chat_ids(llm.tokenizer, req)
        _check_length(llm, ids)
        params = req.to_sampling_params(default_max_tokens=_room(llm, ids))
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        stream = llm.generate(ids, params, rid, priority=req.priority)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = chat_chunks(stream, rid, req, include_usage, metrics, llm.tokenizer)
            return sse(await first_event(chunks), chunks)
        final = await _watch(request, last(stream, metrics))
        return responses.chat_response(
            rid, req.model, int(time.time()), final, llm.tokenizer, chat_logprobs(req)
        )

    return app


# --- bodies and checks ---------------------------------------------------------------


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise _too_large(limit)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(
            400, f"the request body is not valid UTF-8 ({err.reason} at byte {err.start})"
        ) from None
    try:
        body = json.loads(text)
    except ValueError as err:
        raise APIError(400, f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def _parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise validation_error(err) from None


def _check_model(name: str, served: str) -> None:
    if name != served:
        raise APIError(
            404,
            f"the model {name!r} does not exist; this server serves {served!r}",
            type="NotFoundError",
            param="model",
            code="model_not_found",
        )


def _check_key(request: Request, api_key: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
        raise APIError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            type="authentication_error",
            code="invalid_api_key",
        )


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes", code="too_large")


def _chat_ids(tokenizer: Any, req: Any) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(
            400, "this model has no chat template; use /v1/completions", param="messages"
        )
    try:
        text = tokenizer.apply_chat_template(
            req.conversation(),
            tokenize=False,
            add_generation_prompt=req.add_generation_prompt,
            **(req.chat_template_kwargs or {}),
        )
    except APIError:
        raise
    except Exception as err:  # a template may raise on odd conversations (jinja errors)
        raise APIError(400, f"the chat template cannot render these messages: {err}") from None
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _prompt_ids(llm: AsyncLLM, prompt: str | list[int]) -> tuple[str | list[int], list[int]]:
    ids = llm.tokenizer(prompt).input_ids if isinstance(prompt, str) else list(prompt)
    _check_length(llm, ids)
    return prompt, ids


def _check_length(llm: AsyncLLM, ids: list[int]) -> None:
    if len(ids) >= llm.max_model_len:
        raise APIError(
            400,
            f"the prompt has {len(ids)} tokens; this model's context is {llm.max_model_len} "
            "tokens, which leaves no room to generate: shorten it",
            param="messages",
            code="context_length_exceeded",
        )


def _room(llm: AsyncLLM, ids: list[int]) -> int:
    return max(llm.max_model_len - len(ids), 1)


def _error_response(err: APIError, metrics: ServerMetrics) -> JSONResponse:
    metrics.errors.labels(str(err.status)).inc()
    return JSONResponse(err.body(), status_code=err.status)


# --- waiting for a client --------------------------------------------------------------


async def _watch(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (aborting its requests) if the client disconnects."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise APIError(499, "the client closed the connection", code="client_closed")
