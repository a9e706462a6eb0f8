"""``ferrule bench serve``: a load generator for a running OpenAI-compatible server.

Requests arrive as a Poisson process of ``request_rate`` per second (``inf``: all at once),
at most ``concurrency`` in flight; each streams a completion of ``output_len`` tokens for a
prompt of ``input_len`` random token ids (fixed seed; EOS ignored). Per request it records
the time to first token (first streamed text) and the time per output token after it;
it reports throughput, mean / p50 / p99 of both, and the failures.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    tpot: float = 0.0
    tokens: int = 0
    error: str = ""


@dataclass
class Report:
    duration: float
    results: list[Result] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        good = [r for r in self.results if r.ok]
        tokens = sum(r.tokens for r in good)
        errors: dict[str, int] = {}
        for r in self.results:
            if not r.ok:
                errors[r.error] = errors.get(r.error, 0) + 1
        return {
            "requests": len(self.results),
            "completed": len(good),
            "failed": len(self.results) - len(good),
            "errors": errors,
            "duration_s": self.duration,
            "output_tokens": tokens,
            "output_tokens_per_s": tokens / self.duration if self.duration > 0 else 0.0,
            "requests_per_s": len(good) / self.duration if self.duration > 0 else 0.0,
            "ttft_s": _stats([r.ttft for r in good]),
            "tpot_s": _stats([r.tpot for r in good if r.tokens > 1]),
        }


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": math.nan, "p50": math.nan, "p99": math.nan}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"mean": statistics.fmean(ordered), "p50": statistics.median(ordered), "p99": p99}


async def run_load(
    url: str,
    *,
    num_prompts: int = 100,
    request_rate: float = math.inf,
    concurrency: int = 64,
    input_len: int = 128,
    output_len: int = 64,
    api_key: str | None = None,
    seed: int = 0,
) -> Report:
    import httpx

    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = random.Random(seed)
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=None) as client:
        listing = (await client.get("/models")).raise_for_status().json()
        model = listing["data"][0]["id"]
        vocab = 256  # ids inside any byte-level vocabulary (tiny test models have 320)
        prompts = [[rng.randrange(10, vocab) for _ in range(input_len)] for _ in range(num_prompts)]
        gaps = [
            0.0 if math.isinf(request_rate) else rng.expovariate(request_rate)
            for _ in range(num_prompts)
        ]

        async def one(prompt: list[int]) -> Result:
            async with limit:
                return await _stream_one(client, model, prompt, output_len)

        started = time.perf_counter()
        tasks = []
        for prompt, gap in zip(prompts, gaps, strict=True):
            if gap:
                await asyncio.sleep(gap)
            tasks.append(asyncio.ensure_future(one(prompt)))
        results = await asyncio.gather(*tasks)
        return Report(time.perf_counter() - started, list(results))


async def _stream_one(client: Any, model: str, prompt: list[int], output_len: int) -> Result:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_len,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    sent = time.perf_counter()
    first = None
    chunks = 0
    try:
        async with client.stream("POST", "/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Result(False, error=f"HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("choices") and event["choices"][0].get("text"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
    except Exception as err:  # a load generator counts failures instead of stopping
        return Result(False, error=type(err).__name__)
    end = time.perf_counter()
    if first is None:
        return Result(False, error="no output")
    tokens = max(chunks, 1)
    tpot = (end - first) / (tokens - 1) if tokens > 1 else 0.0
    return Result(True, ttft=first - sent, tpot=tpot, tokens=tokens)
