"""Running a model block by block: capture the first block's inputs, replay any block.

Generic for every architecture: the first decoder block's inputs are caught by a forward
pre-hook that records the hidden states, the other positional arguments and the keyword
arguments (position embeddings, masks, ...) and then stops the forward pass. Each block
is then run on those recorded inputs, one calibration batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class BlockInputs:
    """Per calibration batch: hidden states ``[b, L, H]``, extra args and kwargs."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    args: list[tuple[Any, ...]] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass at the first block."""


class StopBlock(Exception):
    """Raised by a hook once the rest of a block's forward pass is not needed."""


def move_outside_blocks(model: nn.Module, blocks_path: str, device: torch.device | str) -> None:
    """Move every parameter and buffer that is not inside the decoder blocks to ``device``.

    That is the embeddings, rotary tables, final norm and head: whatever an architecture
    runs outside its blocks, without having to list it.
    """
    prefix = blocks_path + "."
    for module_name, module in model.named_modules():
        if module_name == blocks_path or module_name.startswith(prefix):
            continue
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = nn.Parameter(param.data.to(device), param.requires_grad)
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = buf.to(device)


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    blocks: nn.ModuleList,
    ids: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
) -> BlockInputs:
    """Run the model on ``ids [S, L]`` in batches and record what reaches ``blocks[0]``."""
    captured = BlockInputs()

    def hook(_module, args, kwargs):
        captured.hidden.append(args[0])
        captured.args.append(tuple(args[1:]))
        captured.kwargs.append({k: v for k, v in kwargs.items() if k != "past_key_values"})
        raise _Captured

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in ids.split(batch_size):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _Captured:
                continue
            raise RuntimeError("the model finished a forward pass without reaching its first block")
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """The block's output hidden states for every recorded batch.

    A batch whose pass a hook ends with :class:`StopBlock` contributes no output.
    """
    outputs = []
    for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs, strict=True):
        try:
            out = block(hidden, *args, **kwargs)
        except StopBlock:
            continue
        outputs.append(out[0] if isinstance(out, tuple | list) else out)
    return outputs
