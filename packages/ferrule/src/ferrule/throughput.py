"""The offline throughput benchmark: ferrule's engine against ``transformers`` ``generate``.

Both run the same requests (random token ids of a fixed seed, as vLLM's random data set) and
are credited only with *useful* output tokens: each request's own output length. The engine
takes every request at once and batches continuously; ``transformers`` runs them in arrival
order in batches of ``hf_batch_size``, left-padded to the longest prompt of the batch and
generating until the batch's longest output, so padding and finished rows cost it time.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int


@dataclass
class Throughput:
    name: str
    seconds: float
    useful_tokens: int
    prompt_tokens: int
    steps: dict[str, float] | None = None  # the engine's step breakdown (EngineStats)

    @property
    def tokens_per_second(self) -> float:
        return self.useful_tokens / self.seconds if self.seconds > 0 else float("nan")


def make_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    vocab_size: int,
    *,
    spread: bool = False,
    seed: int = 0,
) -> list[BenchRequest]:
    """``num_prompts`` requests; with ``spread`` each length is drawn uniformly between a
    sixteenth of the given length and the length."""
    for name, value in (("num_prompts", num_prompts), ("input_len", input_len)):
        if value < 1:
            raise ValueError(f"{name}={value} must be at least 1")
    if output_len < 1:
        raise ValueError(f"output_len={output_len} must be at least 1")
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        n_in = rng.randint(max(1, input_len // 16), input_len) if spread else input_len
        n_out = rng.randint(max(1, output_len // 16), output_len) if spread else output_len
        ids = [rng.randrange(vocab_size) for _ in range(n_in)]
        requests.append(BenchRequest(ids, n_out))
    return requests


WARMUP_REQUESTS = 8


def run_engine(model: str | os.PathLike[str], requests: list[BenchRequest], **engine_args: Any):
    """Time ferrule's engine on ``requests`` (after a short warm-up)."""
    from ferrule_engine.llm import LLM
    from ferrule_engine.sampling_params import SamplingParams

    llm = LLM(model, **engine_args)
    # Warm-up at the real prompt lengths, so kernels that compile on first use for a shape
    # (Triton's prefill tiles, GPTQ row-count buckets) do it here, not in the timed run; the
    # prompts are reversed so that the timed run finds none of them in the prefix cache.
    warm = [list(reversed(r.prompt_token_ids)) for r in requests[:WARMUP_REQUESTS]]
    llm.generate(warm, SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    params = [
        SamplingParams(max_tokens=r.output_len, temperature=0, ignore_eos=True) for r in requests
    ]
    before = asdict(llm.engine.stats)
    started = time.perf_counter()
    outputs = llm.generate([r.prompt_token_ids for r in requests], params)
    seconds = time.perf_counter() - started
    useful = sum(len(o.outputs[0].token_ids) for o in outputs)
    dtype = llm.engine.loaded.context.dtype
    steps = _step_breakdown(llm.engine.stats, before)
    del llm, outputs
    _release_memory()
    return Throughput("ferrule", seconds, useful, _prompt_tokens(requests), steps), dtype


def run_transformers(
    model: str | os.PathLike[str],
    requests: list[BenchRequest],
    batch_size: int,
    dtype: Any,
    *,
    random_weights: bool = False,
) -> Throughput:
    """Time ``transformers`` ``generate`` on ``requests`` in batches of ``batch_size``.

    ``random_weights`` builds the model from its ``config.json`` with random weights (the
    folder of a ``load_format="dummy"`` run holds none; a GPTQ folder then runs as float).
    """
    import torch
    from transformers import GenerationConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if random_weights:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model)
        config.quantization_config = None
        with torch.device(device):
            hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
        hf.eval()
    else:
        from ferrule_quant.loading import load_model

        hf = load_model(model, dtype=dtype, device=device)
    device = next(hf.parameters()).device
    pad = 0
    useful = 0
    started = time.perf_counter()
    for first in range(0, len(requests), batch_size):
        batch = requests[first : first + batch_size]
        width = max(len(r.prompt_token_ids) for r in batch)
        new = max(r.output_len for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):
            n = len(r.prompt_token_ids)
            ids[row, width - n :] = torch.tensor(r.prompt_token_ids)
            mask[row, width - n :] = 1
        config = GenerationConfig(
            max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad
        )
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
        produced = out.shape[1] - width
        useful += sum(min(r.output_len, produced) for r in batch)
    seconds = time.perf_counter() - started
    del hf
    _release_memory()
    return Throughput("transformers", seconds, useful, _prompt_tokens(requests))


def machine_name() -> str:
    """The accelerator's name, or the CPU's with its core count."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def report(ours: Throughput, theirs: Throughput, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": settings,
        "machine": machine_name(),
        "results": [
            asdict(ours) | {"tokens_per_second": ours.tokens_per_second},
            asdict(theirs) | {"tokens_per_second": theirs.tokens_per_second},
        ],
        "ratio": ours.tokens_per_second / theirs.tokens_per_second,
    }


def _step_breakdown(stats: Any, before: dict[str, float]) -> dict[str, float]:
    """What the timed run added to the engine's step counters."""
    fields = (
        "steps",
        "graph_steps",
        "eager_steps",
        "busy_seconds",
        "schedule_seconds",
        "graph_seconds",
        "eager_seconds",
    )
    now = asdict(stats)
    delta = {name: now[name] - before[name] for name in fields}
    delta["other_seconds"] = delta["busy_seconds"] - (
        delta["schedule_seconds"] + delta["graph_seconds"] + delta["eager_seconds"]
    )
    return delta


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _prompt_tokens(requests: list[BenchRequest]) -> int:
    return sum(len(r.prompt_token_ids) for r in requests)
