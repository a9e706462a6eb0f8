"""``AsyncLLM``: the engine for asyncio code (the OpenAI server), with streaming.

    llm = AsyncLLM("path/to/model", max_waiting=1024)
    async for output in llm.generate("Hello", SamplingParams(max_tokens=16), "req-1"):
        print(output.outputs[0].text)  # cumulative: all the text so far
    await llm.shutdown()

One background thread owns the :class:`~ferrule_engine.engine.LLMEngine` and steps it while
there is work (:mod:`ferrule_engine.engine_loop`); any number of coroutines, on any number of
event loops, submit requests and read their outputs. Prompts are tokenized on the caller's
side, so tokenizing overlaps the model's steps.

Each request yields a :class:`~ferrule_engine.outputs.RequestOutput` every time it changes:
a snapshot whose ``text`` and ``token_ids`` are cumulative, the last one with
``finished=True``. A consumer that stops iterating (``aclose()``, a cancelled task, a client
that disconnected) aborts its request, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from typing import Any

from ferrule_core.errors import ConfigError
from ferrule_core.registry import Registry
from ferrule_engine.engine import LLMEngine
from ferrule_engine.engine_config import EngineConfig
from ferrule_engine.engine_loop import EngineClosed, EngineLoop, EngineOverloaded, Stream
from ferrule_engine.outputs import RequestOutput
from ferrule_engine.sampling_params import SamplingParams

__all__ = ["AsyncLLM", "EngineClosed", "EngineOverloaded"]

LONG_PROMPT_CHARS = 4096  # longer texts are tokenized on a worker thread, off the event loop


class AsyncLLM:
    """A model served to asyncio code; keyword arguments are :class:`EngineConfig`'s.

    ``max_waiting`` bounds the requests that wait for a seat in the batch (including those
    submitted but not yet seen by the engine thread); beyond it ``generate`` raises
    :class:`EngineOverloaded`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        max_waiting: int = 1024,
        registry: Registry | None = None,
        tokenizer: Any = None,
        **engine_args: Any,
    ):
        if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 1:
            raise ConfigError(f"max_waiting={max_waiting!r} must be a positive integer")
        self.max_waiting = max_waiting
        self.engine = LLMEngine(
            model, EngineConfig(**engine_args), registry=registry, tokenizer=tokenizer
        )
        self.tokenizer = self.engine.tokenizer
        self.max_model_len: int = self.engine.max_model_len
        self._loop = EngineLoop(self.engine)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    async def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None,
        request_id: str,
        *,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Stream the outputs of one request (see the module docstring).

        Before the first output it raises ``ValueError`` for a prompt the engine refuses
        (empty, too long, token ids outside the vocabulary, a ``request_id`` in use),
        ``TypeError`` for a prompt that is neither text nor token ids,
        :class:`EngineOverloaded` when ``max_waiting`` requests wait already, and
        :class:`EngineClosed` after :meth:`shutdown` or when the engine thread died; the
        latter also ends a stream that is under way.
        """
        self._raise_if_closed()
        token_ids, text = await self._tokenize(prompt)
        stream = Stream(request_id, asyncio.get_running_loop())
        params = params or SamplingParams()
        added = self._loop.submit_add(stream, token_ids, text, params, priority, self.max_waiting)
        finished = False
        try:
            await asyncio.wrap_future(added)  # the engine's own checks raise here
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished and not _refused(added):
                stream.cancelled = True
                self._loop.submit_abort(request_id)

    async def abort(self, request_id: str) -> None:
        """Abort a request wherever it is; its stream ends with finish_reason ``"abort"``.

        Unknown or finished ids are ignored.
        """
        self._loop.submit_abort(request_id)

    def stats(self) -> dict[str, float]:
        """Counters as of the engine's last step: ``num_running``, ``num_waiting`` (queued
        requests included; ``n > 1`` counts each sample), ``kv_usage`` (0..1),
        ``prefix_hit_rate``, ``prompt_tokens``, ``generation_tokens``, ``num_preemptions``."""
        return self._loop.stats()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Take no new requests; let those under way finish, aborting what is left after
        ``timeout`` seconds (``None``: wait for all); then end the engine thread.
        Calling it again is harmless."""
        self._loop.submit_stop(timeout)
        await asyncio.to_thread(self._loop.thread.join)

    def is_alive(self) -> bool:
        """Whether the engine thread runs and has not died (it keeps running while a
        shutdown lets requests finish)."""
        return self._loop.thread.is_alive() and not self._loop.died

    # --- internals ------------------------------------------------------------------

    def _raise_if_closed(self) -> None:
        with self._loop.lock:
            error = self._loop.closed_error
        if error is not None:
            raise EngineClosed(*error.args) from error.__cause__

    async def _tokenize(self, prompt: str | Sequence[int]) -> tuple[list[int], str | None]:
        if isinstance(prompt, str):
            if len(prompt) > LONG_PROMPT_CHARS:
                return await asyncio.to_thread(self._encode, prompt), prompt
            return self._encode(prompt), prompt
        if isinstance(prompt, (list, tuple)) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            return list(prompt), None
        raise TypeError(
            f"prompt is a {type(prompt).__name__}; give text (str) or token ids (list[int])"
        )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)


def _refused(added: Future[None]) -> bool:
    """Whether the request never reached the engine (so there is nothing to abort)."""
    return added.cancelled() or (added.done() and added.exception() is not None)
