"""Running requests for the server: awaiting a final output, and turning a request's
snapshots into OpenAI SSE chunks (deltas, usage, in-band errors once a stream started).

Every engine stream is closed with ``contextlib.aclosing`` so that a cancelled consumer
(a client that went away) aborts its request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from ferrule_core.errors import FerruleError
from ferrule_engine.async_llm import EngineClosed, EngineOverloaded
from ferrule_engine.server import responses
from ferrule_engine.server.errors import APIError
from ferrule_engine.server.metrics import ServerMetrics


def engine_error(err: Exception) -> APIError:
    if isinstance(err, EngineOverloaded):
        return APIError(429, str(err), type="rate_limit_error", code="overloaded")
    if isinstance(err, EngineClosed):
        return APIError(503, str(err), type="service_unavailable")
    if isinstance(err, (ValueError, TypeError, FerruleError)):
        return APIError(400, str(err))
    raise err


async def last(stream: AsyncIterator[Any], metrics: ServerMetrics) -> Any:
    final = None
    try:
        async with contextlib.aclosing(stream):  # closing aborts the request if cancelled
            async for output in stream:
                final = output
    except (EngineOverloaded, EngineClosed, ValueError, TypeError, FerruleError) as err:
        raise engine_error(err) from None
    metrics.observe(final)
    return final


async def first_event(chunks: AsyncIterator[str]) -> str:
    """The first SSE event, so that errors before any output become a plain error response."""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return ""


def sse(first: str, chunks: AsyncIterator[str]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(events(), media_type="text/event-stream")


def event(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def chat_logprobs(req: Any) -> int | None:
    return (req.top_logprobs or 0) if req.logprobs else None


def error_event(err: Exception) -> str:
    if not isinstance(err, APIError):
        try:
            err = engine_error(err)
        except Exception as other:  # anything else: report it, keep the server up
            err = APIError(500, f"internal error: {other}", type="server_error")
    return event(err.body())


async def completion_chunks(
    streams, base, req, include_usage, metrics, tokenizer
) -> AsyncIterator[str]:
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Any]) -> None:
        try:
            async with contextlib.aclosing(stream):  # a cancelled pump aborts its request
                async for output in stream:
                    await queue.put((index, output))
        except Exception as err:  # handed to the consumer below
            await queue.put((index, err))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    state = responses.StreamState()
    finals: dict[int, Any] = {}
    created = int(time.time())
    started = False
    try:
        open_streams = len(tasks)
        while open_streams:
            index, item = await queue.get()
            if item is None:
                open_streams -= 1
                continue
            if isinstance(item, Exception):
                if not started:
                    raise engine_error(item)
                yield error_event(item)
                return
            if item.finished:
                finals[index] = item
                metrics.observe(item)
            try:
                chunks = responses.completion_chunk(
                    base,
                    req.model,
                    created,
                    item,
                    state,
                    prompt_index=index,
                    tokenizer=tokenizer,
                    want_logprobs=req.logprobs,
                )
            except APIError as err:
                yield error_event(err)
                return
            for chunk in chunks:
                started = True
                yield event(chunk)
        if include_usage:
            yield event(responses.usage_chunk(base, req.model, created, list(finals.values())))
        yield "data: [DONE]\n\n"
    finally:
        for task in tasks:
            task.cancel()


async def chat_chunks(stream, rid, req, include_usage, metrics, tokenizer) -> AsyncIterator[str]:
    created = int(time.time())
    state = responses.StreamState()
    final = None
    started = False
    try:
        async with contextlib.aclosing(stream):  # a client gone mid-stream aborts the request
            async for output in stream:
                for chunk in responses.chat_chunk(
                    rid,
                    req.model,
                    created,
                    output,
                    state,
                    tokenizer=tokenizer,
                    want_logprobs=chat_logprobs(req),
                ):
                    started = True
                    yield event(chunk)
                final = output
    except Exception as err:
        if not started:
            raise engine_error(err) from None
        yield error_event(err)
        return
    if final is not None:
        metrics.observe(final)
    if include_usage and final is not None:
        yield event(responses.usage_chunk(rid, req.model, created, [final], chat=True))
    yield "data: [DONE]\n\n"
