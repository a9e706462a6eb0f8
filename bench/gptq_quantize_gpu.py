"""GPTQ quantization time and peak GPU memory on a Llama-3-8B-shaped model (random weights).

    python bench/gptq_quantize_gpu.py                      # the full 8B shape, 128 x 2048
    python bench/gptq_quantize_gpu.py --layers 4 --samples 16   # a quick look

Speed does not depend on the weights' values, so the model is random (float16, Llama-3-8B
shapes: hidden 4096, FFN 14336, 32 layers, 32 heads / 8 KV heads, vocab 128,256) and so are
the calibration token ids. The whole pipeline runs as `ferrule quantize` runs it, writing
the checkpoint. Printed, all from this one run: the time of each phase, the peak GPU memory,
and the quantization time in units of one float16 forward pass of the whole model over
the calibration set (timed here too), then the card's name.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from ferrule_core import QuantizeConfig, load_plugins
from ferrule_quant.blocks import capture_block_inputs, move_outside_blocks, run_block
from ferrule_quant.pipeline import quantize_loaded


def llama3_8b_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    )


@torch.no_grad()
def random_model(config, device):
    """The model in float16 on the CPU, its weights drawn on the GPU (seconds, not minutes)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    model = model.to_empty(device="cpu")
    gen = torch.Generator(device).manual_seed(0)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.copy_(
                torch.randn(param.shape, generator=gen, device=device, dtype=param.dtype) * 0.02
            )
    for module in model.modules():  # rotary tables were not computed on the meta device
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            fresh = type(module)(config=module.config)
            module.inv_freq, module.original_inv_freq = fresh.inv_freq, fresh.original_inv_freq
    return model.eval()


@torch.no_grad()
def forward_seconds(model, ids, batch_size: int, device) -> float:
    """One float16 pass of the decoder blocks over the calibration set, block by block."""
    blocks = model.get_submodule("model.layers")
    move_outside_blocks(model, "model.layers", device)
    inputs = capture_block_inputs(model, blocks, ids, batch_size=batch_size, device=device)
    move_outside_blocks(model, "model.layers", "cpu")
    total = 0.0
    for block in blocks:
        block.to(device)
        torch.cuda.synchronize()
        start = time.perf_counter()
        inputs.hidden = run_block(block, inputs)
        torch.cuda.synchronize()
        total += time.perf_counter() - start
        block.to("cpu")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--desc-act", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    device = torch.device("cuda")

    start = time.perf_counter()
    config = llama3_8b_config(args.layers)
    model = random_model(config, device)
    build = time.perf_counter() - start
    ids = torch.randint(
        0,
        config.vocab_size,
        (args.samples, args.seq_len),
        generator=torch.Generator().manual_seed(0),
    )
    registry = load_plugins()
    qconfig = QuantizeConfig(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act)

    forward = forward_seconds(model, ids, args.batch_size, device)
    torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as out:
        report = quantize_loaded(
            model,
            out,
            qconfig,
            arch=registry.architecture_for("llama"),
            method=registry.quant_method("gptq"),
            ids=ids,
            device=device,
            model_config=config.to_dict(),
            batch_size=args.batch_size,
            progress=False,
        )
    phases = report.phase_seconds
    quantize = phases["capture"] + phases["blocks"]
    rows = [
        ("model", f"Llama-3-8B shape, {args.layers} layers, float16, random weights"),
        ("calibration", f"{args.samples} x {args.seq_len} tokens, batch {args.batch_size}"),
        (
            "config",
            f"{args.bits}-bit g{args.group_size}, desc_act={args.desc_act}, true-sequential",
        ),
        ("build random model (s)", f"{build:.1f}"),
        ("one fp16 forward over the calibration set (s)", f"{forward:.1f}"),
        ("capture first-block inputs (s)", f"{phases['capture']:.1f}"),
        ("quantize all blocks (s)", f"{phases['blocks']:.1f}"),
        ("write checkpoint (s)", f"{phases['save']:.1f}"),
        ("quantization total, without writing (s)", f"{quantize:.1f}"),
        ("quantization / one forward pass", f"{quantize / forward:.1f}x"),
        ("peak GPU memory (GiB)", f"{report.peak_gpu_bytes / 2**30:.2f}"),
        ("GPTQ time of layers (s)", f"{sum(layer.seconds for layer in report.layers):.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure':<{width}} | value |\n| {'-' * width} | --- |")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    print(f"\ncard: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
