"""Act-order against in-order GPTQ in the engine, in one run.

    python bench/act_order_engine.py [--shape llama3-8b] [--num-prompts 512]

Writes two random models of one shape (``ferrule bench random-model``: W4 group 128, one with
act-order layers, ``--desc-act``, one without) and runs, in one process, on random weights
(``load_format="dummy"``):

- offline throughput: the same requests (input 512, output 256, ``--spread``: lengths drawn
  between a sixteenth of those and those), all at once, through the act-order model, the
  in-order one, and the act-order one again (so that drift in the machine shows);
- decode at batch 1 (128 prompt tokens, 128 output tokens, median of 2 runs), each model once.

Prints useful output tokens/s and decode tokens/s per model, the ratios act-order /
in-order (1.00: as fast), and the device. The engine folds act-order permutations into the
operations that feed the layers at load (``ferrule_engine.layers.input_order``); this is
the measurement of what that leaves. ``--shape tiny --num-prompts 8`` runs on a CPU in
seconds (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama3-8b", help="random-model shape (llama3-8b)")
    parser.add_argument("--num-prompts", type=int, default=512, help="offline requests (512)")
    parser.add_argument("--input-len", type=int, default=512, help="prompt tokens (512)")
    parser.add_argument("--output-len", type=int, default=256, help="output tokens (256)")
    args = parser.parse_args()

    from transformers import AutoConfig

    from ferrule.latency import run as run_latency
    from ferrule.random_model import write_random_model
    from ferrule.throughput import machine_name, make_requests, run_engine

    with tempfile.TemporaryDirectory() as tmp:
        models = {
            name: write_random_model(
                Path(tmp) / name, args.shape, bits=4, group_size=128, desc_act=desc_act
            )
            for name, desc_act in (("act-order", True), ("in-order", False))
        }
        config = AutoConfig.from_pretrained(models["in-order"])
        engine_args = {
            "load_format": "dummy",
            "max_model_len": min(2048, config.max_position_embeddings),
            "max_num_seqs": 512,
            "max_num_batched_tokens": 16384,
        }
        vocab = config.vocab_size
        requests = make_requests(
            args.num_prompts, args.input_len, args.output_len, vocab, spread=True, seed=0
        )
        offline: dict[str, list[float]] = {"act-order": [], "in-order": []}
        for name in ("act-order", "in-order", "act-order"):
            result, _ = run_engine(models[name], requests, **engine_args)
            offline[name].append(result.tokens_per_second)
        decode = {
            name: run_latency(
                str(folder), batch_size=1, input_len=128, output_len=128, iterations=2,
                **engine_args,
            )["decode_tokens_per_s"]
            for name, folder in models.items()
        }  # fmt: skip

    base = offline["in-order"][0]
    print("| model | offline tokens/s | / in-order | decode batch 1 tokens/s | / in-order |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in ("in-order", "act-order"):
        runs = offline[name]
        rates = " / ".join(f"{r:,.0f}" for r in runs)
        ratios = " / ".join(f"{r / base:.3f}" for r in runs)
        print(
            f"| W4 g128 {name} | {rates} | {ratios} | {decode[name]:.1f} | "
            f"{decode[name] / decode['in-order']:.3f} |"
        )
    print(f"shape {args.shape}, {args.num_prompts} requests; {machine_name()}")


if __name__ == "__main__":
    main()
