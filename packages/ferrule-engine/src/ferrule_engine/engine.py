"""``LLMEngine``: requests in, one scheduler step at a time, request outputs out.

One :meth:`step` = the scheduler picks this step's tokens under its budget, the model
runner computes them and samples the requests that reached their next token, the scheduler
applies the token-based stops (EOS, stop token ids, lengths), and the output processor
detokenizes incrementally and applies stop strings. A request with ``n > 1`` becomes ``n``
child requests with the same prompt; with prefix caching on they share the prompt's KV
blocks (the second child hits the blocks the first is computing in the same step).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from ferrule_core.errors import ConfigError
from ferrule_core.plugins import default_registry
from ferrule_core.registry import Registry
from ferrule_engine.config import SchedulerConfig
from ferrule_engine.engine_config import (
    CPU_KV_CACHE_DEFAULT,
    CPU_KV_CACHE_SHARE,
    EngineConfig,
)
from ferrule_engine.model_loader import load_engine_model
from ferrule_engine.model_runner import ModelRunner
from ferrule_engine.output_processor import OutputProcessor
from ferrule_engine.request import Request, RequestStatus
from ferrule_engine.sampling_params import SamplingParams
from ferrule_engine.scheduler import Scheduler

logger = logging.getLogger("ferrule.engine")
GIB = 1 << 30


@dataclass
class EngineStats:
    """Counters since the engine started.

    ``graph_steps``/``eager_steps`` count the steps that replayed a CUDA graph or ran the
    model eagerly; the ``*_seconds`` split the busy time into scheduling, the model step
    (inputs, forward, sampling, up to the sampled tokens on the host; eager and graph steps
    apart) and the rest (applying tokens, detokenizing, outputs).
    """

    steps: int = 0
    prompt_tokens: int = 0
    computed_tokens: int = 0
    generated_tokens: int = 0
    busy_seconds: float = 0.0
    graph_steps: int = 0
    eager_steps: int = 0
    schedule_seconds: float = 0.0
    graph_seconds: float = 0.0
    eager_seconds: float = 0.0


class LLMEngine:
    def __init__(
        self,
        model: str | os.PathLike[str],
        config: EngineConfig | None = None,
        *,
        registry: Registry | None = None,
        tokenizer: Any = None,
    ):
        from transformers import AutoTokenizer

        self.config = config or EngineConfig()
        self.registry = registry or default_registry()
        platform = self.registry.select_platform(self.config.platform)
        self.device = torch.device(platform.device_type)
        torch.manual_seed(self.config.seed)
        self.loaded = load_engine_model(
            model,
            registry=self.registry,
            device=self.device,
            dtype=self.config.dtype,
            linear_kernel=self.config.linear_kernel,
            attention_kernel=self.config.attention_kernel,
            trust_remote_code=self.config.trust_remote_code,
            load_format=self.config.load_format,
        )
        self.model_config = self.loaded.config
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(
            model, trust_remote_code=self.config.trust_remote_code
        )
        self.runner = ModelRunner(
            self.loaded.model,
            device=self.device,
            dtype=self.loaded.context.dtype,
            block_size=self.config.block_size,
        )
        num_blocks = self._num_blocks(platform)
        self.runner.allocate_kv_cache(num_blocks)
        self.max_model_len = self._max_model_len(num_blocks)
        self.runner.prepare(self.max_model_len)
        if self.device.type == "cuda" and not self.config.enforce_eager:
            self.runner.capture_graphs(
                min(self.config.max_cudagraph_batch, self.config.max_num_seqs), self.max_model_len
            )
        policy = self.registry.scheduler(self.config.scheduling_policy).policy()
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=self.config.max_num_seqs,
                max_num_batched_tokens=self.config.max_num_batched_tokens,
                max_model_len=self.max_model_len,
                block_size=self.config.block_size,
                num_blocks=num_blocks,
                enable_prefix_caching=self.config.enable_prefix_caching,
                policy=self.config.scheduling_policy,
                sliding_window=self.loaded.model.sliding_window_of(self.model_config),
            ),
            policy,
        )
        self.outputs = OutputProcessor(self.tokenizer)
        self.stats = EngineStats()
        self._eos = self.tokenizer.eos_token_id
        self._extra_stop_ids = _generation_eos_ids(model) - {self._eos}
        logger.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB); max_model_len %d",
            num_blocks,
            self.config.block_size,
            num_blocks * self.runner.bytes_per_block() / (1 << 30),
            self.max_model_len,
        )

    # --- sizing ----------------------------------------------------------------------

    def _num_blocks(self, platform: Any) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        budget = self.config.kv_cache_memory
        if budget is None:
            if self.device.type == "cpu":
                _total, available = platform.memory()
                budget = CPU_KV_CACHE_DEFAULT
                if available:
                    budget = min(budget, int(available * CPU_KV_CACHE_SHARE))
            else:
                budget = self._gpu_kv_budget(platform)
        blocks = budget // self.runner.bytes_per_block()
        if blocks < 2:
            raise ConfigError(
                f"kv_cache_memory={budget} bytes holds {blocks} KV blocks of "
                f"{self.runner.bytes_per_block()} bytes; give at least 2 blocks' worth"
            )
        return int(blocks)

    def _gpu_kv_budget(self, platform: Any) -> int:
        """What ``gpu_memory_utilization`` of the device leaves for the KV cache.

        The peak of a profiled largest step (weights, activations, logits) and the memory
        that is not torch's (other processes, the CUDA context) are taken off; CUDA graphs
        reuse the activation memory pool and need little beyond it.
        """
        config = self.config
        limit = self._requested_model_len() or config.max_num_batched_tokens
        peak = self.runner.profile_peak_memory(
            config.max_num_batched_tokens, config.max_num_seqs, limit
        )
        total, free = platform.memory()
        non_torch = max(total - free - torch.cuda.memory_reserved(self.device), 0)
        budget = int(total * config.gpu_memory_utilization) - peak - non_torch
        logger.info(
            "GPU memory: %.2f GiB total, profiled peak %.2f GiB, outside torch %.2f GiB; "
            "KV cache gets %.2f GiB (gpu_memory_utilization %.2f)",
            total / GIB,
            peak / GIB,
            non_torch / GIB,
            budget / GIB,
            config.gpu_memory_utilization,
        )
        if budget < 2 * self.runner.bytes_per_block():
            raise ConfigError(
                f"gpu_memory_utilization={config.gpu_memory_utilization} of {total / GIB:.1f} "
                f"GiB leaves no room for a KV cache: the weights and a step of "
                f"{config.max_num_batched_tokens} tokens peak at {peak / GIB:.2f} GiB and "
                f"{non_torch / GIB:.2f} GiB is used outside torch; raise it or lower "
                "max_num_batched_tokens"
            )
        return budget

    def _requested_model_len(self) -> int | None:
        """``max_model_len`` as configured, else the model's ``max_position_embeddings``."""
        return self.config.max_model_len or getattr(
            self.model_config, "max_position_embeddings", None
        )

    def _max_model_len(self, num_blocks: int) -> int:
        capacity = (num_blocks - 1) * self.config.block_size
        limit = self._requested_model_len() or capacity
        if limit > capacity:
            logger.warning(
                "max_model_len lowered from %d to %d: the KV cache (%d blocks of %d) holds no more",
                limit,
                capacity,
                num_blocks - 1,
                self.config.block_size,
            )
        return min(limit, capacity)

    # --- requests --------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
        arrival_time: float | None = None,
        prompt_text: str | None = None,
    ) -> None:
        """Queue a request; ``prompt`` is text (tokenized here) or token ids.

        ``prompt_text`` is the text that token-id prompts were made from, if any: it only
        appears as ``RequestOutput.prompt`` (callers that tokenize ahead pass it along).
        """
        params = params or SamplingParams()
        if isinstance(prompt, str):
            text, token_ids = prompt, self.tokenizer(prompt).input_ids
        else:
            text, token_ids = prompt_text, [int(t) for t in prompt]
        self._check_prompt(request_id, token_ids)
        if not params.ignore_eos and self._extra_stop_ids:
            stops = list(params.stop_token_ids) + sorted(self._extra_stop_ids)
            params = params.clone(stop_token_ids=stops)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        children = []
        for index in range(params.n):
            child_params = params if params.n == 1 else _child_params(params, index)
            child_id = request_id if params.n == 1 else f"{index}_{request_id}"
            children.append(
                Request(
                    child_id,
                    token_ids,
                    child_params,
                    eos_token_id=self._eos,
                    arrival_time=arrival,
                    priority=priority,
                    max_model_len=self.max_model_len,
                )
            )
        self.outputs.add(request_id, text, token_ids, params, children)
        for child in children:
            self.scheduler.add_request(child)
        self.stats.prompt_tokens += len(token_ids) * len(children)

    def _check_prompt(self, request_id: str, token_ids: list[int]) -> None:
        if self.outputs.has(request_id):
            raise ValueError(f"request_id {request_id!r} is already in use; give a new one")
        if not token_ids:
            raise ValueError(f"request {request_id!r}: the prompt is empty; give some text")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"request {request_id!r}: the prompt has {len(token_ids)} tokens, which leaves no "
                f"room to generate within max_model_len={self.max_model_len}; shorten it"
            )
        vocab = self.model_config.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(
                f"request {request_id!r}: token ids {bad[:5]} are outside the vocabulary "
                f"[0, {vocab})"
            )

    def abort_request(self, request_ids: str | list[str]) -> None:
        """Stop requests wherever they are; their blocks are freed."""
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        children = [c for rid in ids for c in self.outputs.children_of(rid)]
        self.scheduler.abort_requests(children)
        self.runner.forget(children)
        self.outputs.abort(ids)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # --- one step --------------------------------------------------------------------

    def step(self, finished_only: bool = False) -> list[Any]:
        """Run one scheduler step; return the outputs of the requests it changed (with
        ``finished_only``, of those it finished)."""
        started = time.perf_counter()
        output = self.scheduler.schedule()
        if not output.scheduled:
            return self.outputs.collect_finished()
        scheduled = time.perf_counter()
        replays = self.runner.graphs.replays if self.runner.graphs is not None else 0
        result = self.runner.execute(output.scheduled)
        executed = time.perf_counter()
        stats = self.stats
        stats.schedule_seconds += scheduled - started
        if self.runner.graphs is not None and self.runner.graphs.replays > replays:
            stats.graph_steps += 1
            stats.graph_seconds += executed - scheduled
        else:
            stats.eager_steps += 1
            stats.eager_seconds += executed - scheduled
        now = time.monotonic()
        finished = self.scheduler.update_from_output(output, result.sampled)
        stopped = self.outputs.process(result, now)
        if stopped:
            self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        done = [r.request_id for r in finished] + stopped
        self.runner.forget(done)
        self.stats.steps += 1
        self.stats.computed_tokens += output.num_batched_tokens
        self.stats.generated_tokens += len(result.sampled)
        self.stats.busy_seconds += time.perf_counter() - started
        return self.outputs.changed(now, finished_only)

    def prefix_cache_stats(self) -> dict[str, float]:
        manager = self.scheduler.kv_manager
        return {
            "queries": manager.prefix_queries,
            "hits": manager.prefix_hits,
            "hit_rate": manager.hit_rate,
            "usage": manager.usage,
        }


def _child_params(params: SamplingParams, index: int) -> SamplingParams:
    seed = None if params.seed is None else params.seed + index
    return params.clone(n=1, seed=seed)


def _generation_eos_ids(folder: str | os.PathLike[str]) -> set[int]:
    """The end-of-sequence ids ``generation_config.json`` lists (chat models often have two)."""
    import json
    from pathlib import Path

    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return set()
    try:
        value = json.loads(path.read_text()).get("eos_token_id")
    except ValueError:
        return set()
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {int(v) for v in value if isinstance(v, int)}
    return set()
