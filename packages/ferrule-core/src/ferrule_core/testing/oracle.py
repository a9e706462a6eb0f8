"""The float64 oracle for a saved GPTQ checkpoint: the original model, dequantized exactly.

Logits of a loaded quantized model are compared against this: a float64 copy of the float
model whose quantized linears hold the float64 dequantization of the saved tensors (read
straight from the safetensors files, zeros interpreted per the saved checkpoint format),
and whose other tensors are the saved ones.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ferrule_core.format import dequantize

PARTS = ("qweight", "qzeros", "scales", "g_idx")


def float64_oracle(model: nn.Module, checkpoint: str | Path) -> nn.Module:
    """A float64 copy of ``model`` carrying the checkpoint's weights, dequantized in float64."""
    from safetensors.torch import load_file

    folder = Path(checkpoint)
    quantize_config = json.loads((folder / "quantize_config.json").read_text())
    saved: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        saved.update(load_file(path))
    reference = copy.deepcopy(model).double()
    state = reference.state_dict()
    with torch.no_grad():
        for name, module in reference.named_modules():
            if f"{name}.qweight" not in saved:
                continue
            weight = dequantize(
                *(saved.pop(f"{name}.{part}") for part in PARTS),
                quantize_config["bits"],
                checkpoint_format=quantize_config["checkpoint_format"],
                dtype=torch.float64,
            )
            module.weight.copy_(weight.t())
        for name, tensor in saved.items():
            state[name].copy_(tensor)
    return reference.eval()


def max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|``, in float64."""
    want = want.double()
    return float((got.double() - want).abs().max() / want.abs().max())
