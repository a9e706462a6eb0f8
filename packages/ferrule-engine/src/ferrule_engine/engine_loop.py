"""The thread that owns an :class:`~ferrule_engine.engine.LLMEngine` for the async front end.

Nothing else touches the engine. Other threads send commands through a thread-safe queue
(add, abort, stop); the thread drains them between steps, runs :meth:`LLMEngine.step` while
there is work and sleeps on the queue when there is none. Each changed
:class:`~ferrule_engine.outputs.RequestOutput` goes to its request's :class:`Stream`, an
``asyncio.Queue`` on the consumer's event loop, through ``loop.call_soon_threadsafe`` (one
call per loop per step). An exception in a step ends the thread: every open stream and every
queued add get :class:`EngineClosed` carrying the error.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ferrule_core.errors import FerruleError
from ferrule_engine.engine import LLMEngine
from ferrule_engine.outputs import RequestOutput
from ferrule_engine.sampling_params import SamplingParams

logger = logging.getLogger("ferrule.engine")


class EngineOverloaded(FerruleError):
    """Too many requests wait already; try again later (HTTP 429)."""


class EngineClosed(FerruleError):
    """The engine takes no more requests: it was shut down, or its thread died (HTTP 503)."""


@dataclass(eq=False)
class Stream:
    """Where one request's outputs go: a queue that lives on the consumer's event loop."""

    request_id: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # the consumer left; set from its thread, read by the engine's


@dataclass
class _Add:
    stream: Stream
    token_ids: list[int]
    prompt_text: str | None
    params: SamplingParams
    priority: int
    future: Future[None]


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Stop:
    timeout: float | None


class EngineLoop:
    """Runs ``engine`` on a daemon thread; see the module docstring."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.lock = threading.Lock()  # guards the fields below and the order of puts vs closing
        self.closed_error: EngineClosed | None = None  # set once: no more commands accepted
        self.died = False
        self.num_pending_adds = 0  # adds queued but not yet handed to the engine
        self.snapshot: dict[str, float] = {}
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._streams: dict[str, Stream] = {}
        self._dirty = False  # an abort left outputs for the next step to report
        self._deadline: float | None = None
        self._stopping = False
        self._aborted_all = False
        self._publish()
        self.thread = threading.Thread(target=self._run, name="ferrule-engine", daemon=True)
        self.thread.start()

    # --- called from other threads ----------------------------------------------------

    def submit_add(
        self,
        stream: Stream,
        token_ids: list[int],
        prompt_text: str | None,
        params: SamplingParams,
        priority: int,
        max_waiting: int,
    ) -> Future[None]:
        """Queue an add, or raise EngineClosed / EngineOverloaded.

        The future completes once the engine took the request, or holds the error that
        ``LLMEngine.add_request`` raised; cancelling it in time keeps the request out.
        """
        added: Future[None] = Future()
        command = _Add(stream, token_ids, prompt_text, params, priority, added)
        with self.lock:
            if self.closed_error is not None:
                raise _copy(self.closed_error)
            waiting = int(self.snapshot["num_waiting"]) + self.num_pending_adds
            if waiting >= max_waiting:
                raise EngineOverloaded(
                    f"{waiting} requests are waiting already (max_waiting={max_waiting}); "
                    "retry later"
                )
            self.num_pending_adds += 1
            self._commands.put(command)
        return added

    def submit_abort(self, request_id: str) -> None:
        self._commands.put(_Abort(request_id))  # after the thread ended: harmless

    def submit_stop(self, timeout: float | None) -> None:
        with self.lock:
            if self.closed_error is None:
                self.closed_error = EngineClosed(
                    "the engine is shut down and accepts no new requests"
                )
                self._commands.put(_Stop(timeout))

    def stats(self) -> dict[str, float]:
        with self.lock:
            stats = dict(self.snapshot)
            stats["num_waiting"] += self.num_pending_adds
        return stats

    # --- the engine thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                busy = self.engine.has_unfinished_requests() or self._dirty
                if not busy and self._stopping:
                    break
                self._drain(block=not busy)
                if self._stopping and not self._aborted_all and self._past_deadline():
                    self._abort_all()
                if not (self.engine.has_unfinished_requests() or self._dirty):
                    self._publish()
                    continue
                self._dirty = False
                outputs = self.engine.step()
                self._publish()  # first: whoever reads an output sees stats as new as it
                self._dispatch(outputs)
                if not self.engine.has_unfinished_requests():
                    self._fail_orphans()
        except BaseException as error:  # every failure must reach the clients
            logger.exception("the engine thread died")
            self._die(error)
            return
        self._close_streams(EngineClosed("the engine was shut down"))

    def _drain(self, *, block: bool) -> None:
        commands = [self._commands.get()] if block else []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                break
        added = 0
        for command in commands:
            if isinstance(command, _Add):
                added += 1
                self._add(command)
            elif isinstance(command, _Abort):
                self.engine.abort_request(command.request_id)
                self._dirty = True
            else:
                self._stopping = True
                if command.timeout is not None:
                    self._deadline = time.monotonic() + command.timeout
        if added:
            with self.lock:
                self.num_pending_adds -= added
                self.snapshot["num_waiting"] = self.engine.scheduler.num_waiting

    def _add(self, command: _Add) -> None:
        stream = command.stream
        if stream.cancelled or not command.future.set_running_or_notify_cancel():
            return
        try:
            self.engine.add_request(
                stream.request_id,
                command.token_ids,
                command.params,
                priority=command.priority,
                prompt_text=command.prompt_text,
            )
        except Exception as error:  # the caller gets it as is
            command.future.set_exception(error)
            return
        self._streams[stream.request_id] = stream
        command.future.set_result(None)

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _abort_all(self) -> None:
        self._aborted_all = True
        if self._streams:
            self.engine.abort_request(list(self._streams))
            self._dirty = True

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Stream, Any]]] = defaultdict(list)
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                del self._streams[output.request_id]
            if not stream.cancelled:
                by_loop[stream.loop].append((stream, output))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the consumer's loop is closed: nobody will read these
                for stream, output in items:
                    stream.cancelled = True
                    if not output.finished:
                        self.engine.abort_request(stream.request_id)
                        self._dirty = True

    def _fail_orphans(self) -> None:
        """Streams left when the engine has no work would wait forever: end them."""
        for request_id in list(self._streams):
            stream = self._streams.pop(request_id)
            error = RuntimeError(f"request {request_id!r} ended without a final output")
            self._send(stream, error)

    def _publish(self) -> None:
        engine = self.engine
        manager = engine.scheduler.kv_manager
        snapshot = {
            "num_running": engine.scheduler.num_running,
            "num_waiting": engine.scheduler.num_waiting,
            "kv_usage": manager.usage,
            "prefix_hit_rate": manager.hit_rate,
            "prompt_tokens": engine.stats.prompt_tokens,
            "generation_tokens": engine.stats.generated_tokens,
            "num_preemptions": engine.scheduler.num_preemptions,
        }
        with self.lock:
            self.snapshot = snapshot

    def _die(self, error: BaseException) -> None:
        closed = EngineClosed(f"the engine thread died: {type(error).__name__}: {error}")
        closed.__cause__ = error
        with self.lock:
            self.closed_error = closed  # from here on nothing more is queued
            self.died = True
        self._close_streams(closed)

    def _close_streams(self, closed: EngineClosed) -> None:
        for stream in self._streams.values():
            self._send(stream, _copy(closed))
        self._streams.clear()
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, _Add) and command.future.set_running_or_notify_cancel():
                command.future.set_exception(_copy(closed))
        with self.lock:
            self.num_pending_adds = 0

    @staticmethod
    def _send(stream: Stream, item: Any) -> None:
        if stream.cancelled:
            return
        try:
            stream.loop.call_soon_threadsafe(_deliver, [(stream, item)])
        except RuntimeError:
            stream.cancelled = True


def _deliver(items: list[tuple[Stream, Any]]) -> None:
    """On the consumer's loop: hand each item to its stream."""
    for stream, item in items:
        stream.queue.put_nowait(item)


def _copy(error: EngineClosed) -> EngineClosed:
    """A fresh instance for each raise (tracebacks attach to the instance)."""
    fresh = EngineClosed(*error.args)
    fresh.__cause__ = error.__cause__
    return fresh
