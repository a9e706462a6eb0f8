"""``ferrule bench latency``: how fast a batch of requests decodes, token after token.

``batch_size`` requests of ``input_len`` random prompt tokens each generate ``output_len``
tokens (``ignore_eos``) through the engine; the time to the first token of the batch
(prefill) and the decode time after it are measured separately, over ``iterations`` runs
after a warm-up, and the medians are reported. Decode tokens/s is per sequence: output
tokens after the first over the decode time, what a user of a chat sees.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class LatencyRun:
    prefill_s: float
    decode_s: float
    total_s: float


def _one_run(engine: Any, prompts: list[list[int]], output_len: int, tag: str) -> LatencyRun:
    from ferrule_engine.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    started = time.perf_counter()
    for index, prompt in enumerate(prompts):
        engine.add_request(f"{tag}-{index}", prompt, params)
    first = None
    while engine.has_unfinished_requests():
        engine.step()
        if first is None:
            first = time.perf_counter()
    ended = time.perf_counter()
    first = ended if first is None else first
    return LatencyRun(first - started, ended - first, ended - started)


def run(
    model: str,
    *,
    batch_size: int,
    input_len: int,
    output_len: int,
    iterations: int = 3,
    seed: int = 0,
    **engine_args: Any,
) -> dict[str, Any]:
    from ferrule.throughput import machine_name
    from ferrule_engine.llm import LLM

    for name, value in (
        ("batch_size", batch_size),
        ("input_len", input_len),
        ("output_len", output_len),
        ("iterations", iterations),
    ):
        if value < 1:
            raise ValueError(f"{name}={value} must be at least 1")
    llm = LLM(model, **engine_args)
    engine = llm.engine
    vocab = engine.model_config.vocab_size
    rng = random.Random(seed)

    def draw() -> list[list[int]]:  # new prompts each run: no prefix-cache hits
        return [[rng.randrange(vocab) for _ in range(input_len)] for _ in range(batch_size)]

    _one_run(engine, draw(), 4, "warmup")  # the real shapes: kernels compile here
    runs = [_one_run(engine, draw(), output_len, f"run{i}") for i in range(iterations)]
    decode = statistics.median(r.decode_s for r in runs)
    return {
        "settings": {
            "model": str(model),
            "batch_size": batch_size,
            "input_len": input_len,
            "output_len": output_len,
            "iterations": iterations,
            "dtype": str(engine.loaded.context.dtype).removeprefix("torch."),
            "cuda_graphs": engine.runner.graphs is not None,
        },
        "machine": machine_name(),
        "runs": [asdict(r) for r in runs],
        "prefill_s": statistics.median(r.prefill_s for r in runs),
        "decode_s": decode,
        "decode_tokens_per_s": (output_len - 1) / decode if decode > 0 else float("nan"),
        "kernels": _kernels(engine.loaded.model),
    }


def _kernels(model: Any) -> list[str]:
    names = set()
    for module in model.modules():
        for spec in getattr(module, "kernel_specs", None) or []:
            names.add(spec.name)
        spec = getattr(module, "kernel_spec", None)
        if spec is not None:
            names.add(spec.name)
    return sorted(names)
