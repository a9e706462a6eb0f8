"""The main job's last part: the quantized model answers a few chat prompts through
``LLM.chat``, and the engine's generation speed is printed."""

from __future__ import annotations

import time
from pathlib import Path

PROMPTS = (
    "Write a Python function that checks whether a string is a palindrome.",
    "In two sentences, what does a package manager do on Debian?",
    "What is the difference between a list and a tuple in Python?",
)


def chat_demo(model_dir: Path, *, max_tokens: int = 96, device: str | None = None) -> str:
    """Answer :data:`PROMPTS` (batched, greedy) and return a printable report."""
    from ferrule_engine.llm import LLM
    from ferrule_engine.sampling_params import SamplingParams

    llm = LLM(model_dir, platform=device)
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    started = time.perf_counter()
    outputs = llm.chat(conversations, params)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    dtype = str(llm.engine.loaded.context.dtype).removeprefix("torch.")
    lines = [f"Chat with {model_dir.name} ({dtype}, {len(PROMPTS)} prompts batched, greedy):", ""]
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        lines += [f"> {prompt}", output.outputs[0].text.strip(), ""]
    lines.append(f"{tokens} tokens in {seconds:.1f} s: {tokens / seconds:.1f} tokens/s")
    return "\n".join(lines)
