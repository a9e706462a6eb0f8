"""The calibration pipeline: quantize a Hugging Face model block by block.

1. Load the model on the CPU; find its layout through the architecture plugin for its
   ``model_type``.
2. Capture the first decoder block's inputs on the work device (only the modules outside
   the blocks move there).
3. For each block: move it to the device; for each true-sequential group of sub-layers,
   run the block on the calibration inputs with forward hooks that accumulate each
   sub-layer's Hessian, then quantize the group (its dequantized weights are written
   back, so the next group sees them); run the block once more to produce the next
   block's inputs; save the block's packed tensors in the work area; move it back.
4. Write the checkpoint; remove the work area.

The device holds one block and the calibration activations at a time. A rerun of the
same command resumes after the last saved block, replaying the saved blocks' weights.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferrule_core import ArchitectureSpec, QuantizeConfig, QuantMethodSpec, load_plugins
from ferrule_core.format import holds_checkpoint, save_checkpoint
from ferrule_core.registry import Registry
from ferrule_quant.blocks import (
    BlockInputs,
    StopBlock,
    capture_block_inputs,
    move_outside_blocks,
    run_block,
)
from ferrule_quant.calibration import calibration_ids, fingerprint
from ferrule_quant.hessian import HessianAccumulator
from ferrule_quant.layer import TENSOR_NAMES, apply_packed, quantize_linears
from ferrule_quant.report import LayerStats, QuantizeReport
from ferrule_quant.workarea import WorkArea

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationOptions:
    source: Any = None  # a file path, a list of strings, or None for the built-in default
    num_samples: int = 128
    seq_len: int = 512
    batch_size: int = 1
    seed: int = 0


def quantize_model(
    model_dir: str | Path,
    out_dir: str | Path,
    config: QuantizeConfig,
    *,
    method: str | None = None,
    calibration: CalibrationOptions = CalibrationOptions(),
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    mse: bool = False,
    overwrite: bool = False,
    restart: bool = False,
    max_shard_size: int | str = "4GB",
    registry: Registry | None = None,
    progress: bool = True,
) -> QuantizeReport:
    """Quantize the model in ``model_dir`` into a GPTQ checkpoint in ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    registry = registry if registry is not None else load_plugins()
    model_config = json.loads((model_dir / "config.json").read_text())
    arch = registry.architecture_for(model_config.get("model_type", "<missing model_type>"))
    spec = registry.quant_method(method or config.quant_method)
    if holds_checkpoint(out_dir) and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a checkpoint; pass overwrite=True (--overwrite)"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    ids = None
    if spec.needs_calibration:
        ids = calibration_ids(
            AutoTokenizer.from_pretrained(model_dir),
            calibration.source,
            num_samples=calibration.num_samples,
            seq_len=calibration.seq_len,
            seed=calibration.seed,
        )
    model_config.pop("quantization_config", None)
    return quantize_loaded(
        model,
        out_dir,
        config,
        arch=arch,
        method=spec,
        ids=ids,
        device=device,
        model_config=model_config,
        source=model_dir,
        batch_size=calibration.batch_size,
        mse=mse,
        overwrite=overwrite,
        restart=restart,
        max_shard_size=max_shard_size,
        progress=progress,
    )


def quantize_loaded(
    model: nn.Module,
    out_dir: str | Path,
    config: QuantizeConfig,
    *,
    arch: ArchitectureSpec,
    method: QuantMethodSpec,
    ids: torch.Tensor | None,
    device: torch.device,
    model_config: dict[str, Any],
    source: Path | None = None,
    batch_size: int = 1,
    mse: bool = False,
    overwrite: bool = False,
    restart: bool = False,
    max_shard_size: int | str = "4GB",
    progress: bool = True,
) -> QuantizeReport:
    """Quantize a model already in memory (on the CPU) with calibration ids ``[S, L]``."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    model.config.use_cache = False
    blocks = model.get_submodule(arch.blocks_path)
    groups = arch.sequential_groups if config.true_sequential else (arch.quantized_modules,)
    manifest: dict[str, Any] = {
        "model": str(source.resolve()) if source else model_config.get("_name_or_path"),
        "config": config.to_dict(),
        "method": method.name,
        "dtype": str(next(model.parameters()).dtype),
        "mse": mse,
        "calibration": None if ids is None else fingerprint(ids),
    }
    work = WorkArea(out_dir, manifest)
    if restart:
        work.remove()
    done = set(work.open())
    if done:
        logger.info("resuming: blocks %s were finished by an earlier run", sorted(done))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    phases = {"capture": 0.0}
    inputs = None
    if method.needs_calibration:
        if ids is None:
            raise ValueError(f"the {method.name} method needs calibration ids")
        move_outside_blocks(model, arch.blocks_path, device)
        inputs = capture_block_inputs(model, blocks, ids, batch_size=batch_size, device=device)
        move_outside_blocks(model, arch.blocks_path, "cpu")
        phases["capture"] = _since(start, device)

    quantized: dict[str, torch.Tensor] = {}
    layers: list[LayerStats] = []
    bar = _progress(len(blocks), progress)
    for index, block in enumerate(blocks):
        prefix = f"{arch.blocks_path}.{index}"
        block.to(device)
        if index in done:
            tensors, stats = work.load_block(index)
            _apply_block(block, prefix, tensors, config.bits)
        else:
            tensors, stats = _quantize_block(
                block, prefix, groups, inputs, method, config, mse, bar
            )
            work.save_block(index, tensors, stats)
        quantized.update(tensors)
        layers.extend(LayerStats.from_dict(s) for s in stats)
        if inputs is not None and index + 1 < len(blocks):
            inputs.hidden = run_block(block, inputs)
        block.to("cpu")
        bar.update(1)
    bar.close()
    del inputs
    phases["blocks"] = _since(start, device) - phases["capture"]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    save_checkpoint(
        out_dir,
        _checkpoint_state(model, quantized),
        config,
        model_config=model_config,
        source=source,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )
    work.remove()
    phases["save"] = _since(start, device) - phases["capture"] - phases["blocks"]
    return QuantizeReport(
        method=method.name,
        layers=layers,
        seconds=time.perf_counter() - start,
        resumed_blocks=len(done),
        peak_gpu_bytes=peak,
        output=str(out_dir),
        phase_seconds=phases,
    )


def _quantize_block(
    block: nn.Module, prefix: str, groups, inputs: BlockInputs | None, spec, config, mse, bar
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors: dict[str, torch.Tensor] = {}
    stats: list[dict[str, Any]] = []
    for group in groups:
        linears = {name: block.get_submodule(name) for name in group}
        hessians = _collect_hessians(block, linears, inputs) if inputs is not None else {}
        for members in _by_hessian(linears, hessians):
            bar.set_postfix_str(f"{prefix}.{'+'.join(members)}")
            hessian = hessians.get(next(iter(members)))
            packed, layer_stats = quantize_linears(members, hessian, spec, config, mse=mse)
            for name, parts in packed.items():
                tensors.update({f"{prefix}.{name}.{key}": value for key, value in parts.items()})
            for entry in layer_stats:
                entry["name"] = f"{prefix}.{entry['name']}"
            stats.extend(layer_stats)
        hessians.clear()
    return tensors, stats


def _collect_hessians(
    block: nn.Module, linears: dict[str, nn.Module], inputs: BlockInputs
) -> dict[str, torch.Tensor]:
    """Run ``block`` on ``inputs`` and accumulate the Hessian of each linear's inputs.

    Sub-layers fed the very same tensor (q, k and v read one normalized hidden state)
    share one accumulator, so the product is computed once. Once every sub-layer of the
    group has seen a batch, the rest of the block is skipped for that batch.
    """
    accumulators: dict[str, HessianAccumulator] = {}
    same_as: dict[str, str] = {}
    first_input: dict[str, tuple[int, tuple[int, ...]]] = {}
    pending = set(linears)

    def accumulate(name: str, x: torch.Tensor) -> None:
        if name not in first_input:
            key = (x.data_ptr(), tuple(x.shape))
            twin = next((n for n, k in first_input.items() if k == key), None)
            first_input[name] = key
            if twin is not None:
                same_as[name] = same_as.get(twin, twin)
        if name in same_as:
            return
        if name not in accumulators:
            accumulators[name] = HessianAccumulator(x.shape[-1], device=x.device)
        accumulators[name].add_batch(x.detach())

    def hook(name):
        def record(_module, args, _output):
            accumulate(name, args[0])
            pending.discard(name)
            if not pending:  # the whole group has seen this batch
                pending.update(linears)
                raise StopBlock

        return record

    handles = [linear.register_forward_hook(hook(name)) for name, linear in linears.items()]
    try:
        run_block(block, inputs)
    finally:
        for handle in handles:
            handle.remove()
    hessians = {name: acc.hessian for name, acc in accumulators.items()}
    for name, twin in same_as.items():
        hessians[name] = hessians[twin]
    return hessians


def _by_hessian(
    linears: dict[str, nn.Module], hessians: dict[str, torch.Tensor]
) -> list[dict[str, nn.Module]]:
    """The group's linears, those sharing one Hessian (one input) together, in order."""
    batches: dict[int, dict[str, nn.Module]] = {}
    for name, linear in linears.items():
        key = id(hessians[name]) if name in hessians else id(linear)
        batches.setdefault(key, {})[name] = linear
    return list(batches.values())


def _apply_block(
    block: nn.Module, prefix: str, tensors: dict[str, torch.Tensor], bits: int
) -> None:
    """Write a saved block's dequantized weights into the float block (resume)."""
    layers = {key.rsplit(".", 1)[0] for key in tensors}
    for layer in sorted(layers):
        packed = {name: tensors[f"{layer}.{name}"] for name in TENSOR_NAMES}
        apply_packed(block.get_submodule(layer.removeprefix(prefix + ".")), packed, bits)


def _checkpoint_state(
    model: nn.Module, quantized: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The model's state dict with each quantized linear's float weight replaced by its tensors."""
    replaced = {key.rsplit(".", 1)[0] + ".weight" for key in quantized if key.endswith(".qweight")}
    state = {k: v for k, v in model.state_dict().items() if k not in replaced}
    state.update(quantized)
    return state


def _since(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="quantizing blocks", unit="block", disable=not enabled)
