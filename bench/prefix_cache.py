"""Time to first token with and without a prefix-cache hit, in one run.

    python bench/prefix_cache.py [MODEL_DIR] [--prefix-tokens 1024] [--repeats 3]

A long shared prefix (the start of the Debian handbook text, as a system-style preamble)
is followed by a few different questions. With prefix caching on, the first request pays
for the whole prompt and the later ones reuse the prefix's KV blocks; with it off, every
request pays. Prints, per mode, the median time to first token of the later requests,
the prefix-cache counters and the ratio (above 1: the cache helps), then the machine.
Default model: the real model of ../shared/MODELS.md (fetched and cached by ferrule.assets).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

QUESTIONS = (
    "Summarise the text above in one sentence.",
    "Which tool installs packages, according to the text?",
    "Name one thing the text says about security.",
    "Who is the text written for?",
)


def measure(model: Path, prefix: list[int], tokenizer, caching: bool, repeats: int) -> dict:
    from ferrule_engine.llm import LLM
    from ferrule_engine.sampling_params import SamplingParams

    llm = LLM(model, enable_prefix_caching=caching, max_num_batched_tokens=4096)
    params = SamplingParams(temperature=0, max_tokens=1)
    ttfts = []
    for index in range(repeats + 1):
        question = tokenizer(" " + QUESTIONS[index % len(QUESTIONS)]).input_ids
        output = llm.generate([prefix + question], params)[0]
        if index:  # the first request fills the cache
            ttfts.append(output.metrics.time_to_first_token)
    stats = llm.engine.prefix_cache_stats()
    return {"ttft": statistics.median(ttfts), **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from ferrule import assets
    from ferrule.throughput import machine_name

    model = args.model or assets.real_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    text = assets.eval_text().read_text(encoding="utf-8")
    prefix = tokenizer(text[: args.prefix_tokens * 8]).input_ids[: args.prefix_tokens]
    off = measure(model, prefix, tokenizer, caching=False, repeats=args.repeats)
    on = measure(model, prefix, tokenizer, caching=True, repeats=args.repeats)
    print("| prefix caching | median TTFT (s) | prefix hits (tokens) | hit rate |")
    print("| --- | ---: | ---: | ---: |")
    for name, row in (("off", off), ("on", on)):
        print(f"| {name} | {row['ttft']:.3f} | {row['hits']} | {row['hit_rate']:.2f} |")
    print(f"\nTTFT ratio off/on: {off['ttft'] / on['ttft']:.2f}x  ({machine_name()})")


if __name__ == "__main__":
    main()
