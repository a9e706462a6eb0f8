"""Where a decode step's GPU time goes: the kernels of one eager decode step, by total time.

    python bench/decode_profile.py MODEL_DIR [--batch 1] [--context 512] [--load-format dummy]

Builds the engine (eager, so every kernel launch is visible), fills a batch of sequences
with ``--context`` prompt tokens, then profiles a few decode steps with torch's profiler and
prints the kernels sorted by total CUDA time, with the number of launches per step and the
step's wall time. This is what decides which fusions pay (METHOD.md: profile first).
"""

from __future__ import annotations

import argparse
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--load-format", default="dummy")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from ferrule_engine.llm import LLM
    from ferrule_engine.sampling_params import SamplingParams

    llm = LLM(args.model, load_format=args.load_format, enforce_eager=True)
    engine = llm.engine
    rng = random.Random(0)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(max_tokens=args.steps + 8, ignore_eos=True, temperature=0)
    for index in range(args.batch):
        prompt = [rng.randrange(vocab) for _ in range(args.context)]
        engine.add_request(str(index), prompt, params)
    while engine.scheduler.waiting or any(
        r.num_computed_tokens < r.num_prompt_tokens for r in engine.scheduler.running
    ):
        engine.step()
    engine.step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - started) / args.steps
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events)
    launches = sum(e.count for e in events)
    print(f"{'kernel':<70} {'us/step':>9} {'launches/step':>14}")
    for e in events[: args.rows]:
        print(
            f"{e.key[:70]:<70} {e.device_time_total / args.steps:>9.1f} {e.count / args.steps:>14.1f}"
        )
    print(
        f"GPU time {total / args.steps / 1e3:.2f} ms/step over {launches / args.steps:.0f} "
        f"launches; wall {wall * 1e3:.2f} ms/step (eager), batch {args.batch}; "
        f"{torch.cuda.get_device_name()}"
    )


if __name__ == "__main__":
    main()
