"""Random weights for speed measurements (``load_format="dummy"``), as vLLM's option.

Speed does not depend on the values of the weights, so a model of a real shape can be
measured without its checkpoint. Float weights are drawn from N(0, 0.02) (``transformers``'
usual ``initializer_range``), norm weights are 1, biases 0. GPTQ layers get random codes,
symmetric or random zero points, scales that keep ``(q - z) * s`` near the float weights'
size, and, for act-order, ``g_idx`` through a random permutation, as GPTQ leaves it.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ferrule_core.quant_linear import QuantLinear

FLOAT_STD = 0.02


def quantized_module_names(spec, config) -> frozenset[str]:
    """The GPTQ layers a checkpoint of ``spec``'s family would hold for ``config``."""
    layers = int(config.num_hidden_layers)
    return frozenset(
        f"{spec.blocks_path}.{index}.{module}"
        for index in range(layers)
        for module in spec.quantized_modules
    )


@torch.no_grad()
def fill_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Fill every parameter and buffer of ``model`` (already on its device) in place."""
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    gen = torch.Generator(device=device).manual_seed(seed)
    named_quant = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    quant_layers = [m for _, m in named_quant]
    skip = {id(t) for layer in quant_layers for t in layer.buffers()}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if id(tensor) in skip or not tensor.is_floating_point():
            continue
        if "norm" in name and name.endswith("weight"):
            tensor.fill_(1.0)
        elif name.endswith("bias"):
            tensor.zero_()
        elif name.endswith("weight"):
            tensor.normal_(0.0, FLOAT_STD, generator=gen)
    # Act-order: layers that read the same input (q, k, v; gate, up) get one permutation, as
    # quantizing them together gives, so they can still be merged into one matmul.
    orders: dict[tuple[str, int], torch.Tensor] = {}
    for name, layer in named_quant:
        key = (name.rpartition(".")[0], layer.in_features)
        if key not in orders:
            orders[key] = torch.randperm(layer.in_features, generator=gen, device=device)
        fill_random_gptq(layer, gen, orders[key])


@torch.no_grad()
def fill_random_gptq(
    layer: QuantLinear, gen: torch.Generator, order: torch.Tensor | None = None
) -> None:
    """Random GPTQ tensors in ``layer`` (on its device); act-order layers assign rows to
    groups through ``order`` (a permutation of the input features; random if ``None``)."""
    bits = layer.bits
    device = layer.qweight.device
    info = torch.iinfo(torch.int32)
    layer.qweight.copy_(
        torch.randint(info.min, info.max, layer.qweight.shape, generator=gen, device=device)
    )
    levels = 2**bits
    if layer.sym:
        codes = torch.full((layer.out_features,), levels // 2, dtype=torch.int64, device=device)
        word = _repeat_code(codes, bits)
        layer.qzeros.copy_(word.expand_as(layer.qzeros))
    else:
        layer.qzeros.copy_(
            torch.randint(info.min, info.max, layer.qzeros.shape, generator=gen, device=device)
        )
    # |q - z| averages levels / 4: scales of 4 * FLOAT_STD / levels give weights near FLOAT_STD.
    scales = torch.rand(layer.scales.shape, generator=gen, device=device) + 0.5
    layer.scales.copy_(scales * (4 * FLOAT_STD / levels))
    if layer.bias is not None:
        layer.bias.zero_()
    if layer.desc_act and layer.group_size != -1:
        if order is None:
            order = torch.randperm(layer.in_features, generator=gen, device=device)
        g_idx = torch.empty_like(layer.g_idx)
        g_idx[order] = (torch.arange(layer.in_features, device=device) // layer.group_size).to(
            g_idx.dtype
        )
        layer.g_idx.copy_(g_idx)
    layer._forget_kernel()


def _repeat_code(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``qzeros`` words of one row whose every code is ``codes[0]`` (a symmetric zero)."""
    from ferrule_core.format import pack_cols

    return pack_cols(codes.reshape(1, -1).to(torch.int32), bits)
