"""The engine-model conformance kit: an architecture plugin's engine model against transformers.

A plugin's test subclasses :class:`EngineModelConformance` in a few lines::

    from ferrule_engine.testing import EngineModelConformance


    class TestLlamaEngine(EngineModelConformance):
        architecture = "llama"  # the ArchitectureSpec whose engine_model is tested
        config_class = "LlamaConfig"  # sized by ferrule_core.testing.TINY_SIZES
        config_overrides = {"num_key_value_heads": 1}

Every test builds a tiny ``transformers`` model with random weights (scaled so that
attention patterns matter), loads its tensors into the engine model named by the spec
(float32, CPU), binds KV caches it allocates (filled with NaN, so a read of a slot nobody
wrote shows), and compares logits at every computed position with the transformers model
run on each whole sequence: a flat prefill of several sequences, decode steps, chunked
prefill, prefill after a cached prefix, a sliding window (``expects_sliding_window``),
a GPTQ model (RTN, ``quantize_config``) against transformers holding the dequantized
weights, the model in bfloat16 (``bfloat16_tolerance``), and a saved checkpoint.
Knobs: ``tolerance``, ``block_size``, ``num_blocks``, ``prompt_lens``, ``decode_steps``,
``chunks``; ``tiny_config()``, ``reference_model()`` and ``engine_model_class()`` may be
overridden.

Importing it needs pytest, torch and transformers (it is for test suites).
"""

from __future__ import annotations

import copy
import importlib
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ferrule_core.config import QuantizeConfig
from ferrule_core.format import dequantize, pack, quantize_rtn
from ferrule_core.forward_batch import build_forward_batch
from ferrule_core.plugins import load_plugins
from ferrule_core.registry import Registry
from ferrule_core.testing.tiny_models import tiny_config, write_tiny_model
from ferrule_engine.layers.context import ModelContext
from ferrule_engine.models.base import EngineModel


class PagedRun:
    """Drives an engine model step by step over a paged cache the test owns.

    Blocks come from a shuffled free list (block 0 stays unused, as the null block);
    ``share(new, old, num_blocks)`` starts a sequence's table with another's first blocks,
    as a prefix-cache hit does.
    """

    def __init__(self, model: EngineModel, block_size: int, num_blocks: int, seed: int = 0):
        self.model = model
        self.block_size = block_size
        caches = [
            torch.full((2, num_blocks, block_size, layer.num_kv_heads, layer.head_dim), math.nan)
            for layer in model.attention_layers()
        ]
        model.bind_kv_caches(caches)
        order = torch.randperm(num_blocks - 1, generator=torch.Generator().manual_seed(seed))
        self.free = [int(b) + 1 for b in order]
        self.tables: dict[str, list[int]] = {}

    def share(self, seq: str, source: str, num_blocks: int) -> None:
        self.tables[seq] = list(self.tables[source][:num_blocks])

    def step(self, work: list[tuple[str, list[int], int]]) -> list[torch.Tensor]:
        """Run ``(seq, new token ids, context length after the step)`` items as one batch;
        the logits ``[len(new), vocab]`` of every new token of each item."""
        for seq, _, context in work:
            table = self.tables.setdefault(seq, [])
            while len(table) * self.block_size < context:
                table.append(self.free.pop())
        batch = build_forward_batch(
            [self.tables[seq] for seq, _, _ in work],
            [len(new) for _, new, _ in work],
            [context for _, _, context in work],
            self.block_size,
        )
        ids = torch.tensor([t for _, new, _ in work for t in new], dtype=torch.int64)
        positions = torch.tensor(
            [p for _, new, c in work for p in range(c - len(new), c)], dtype=torch.int64
        )
        with torch.no_grad():
            logits = self.model.compute_logits(self.model(ids, positions, batch))
        return list(logits.split([len(new) for _, new, _ in work]))


class EngineModelConformance:
    """Base class: set ``architecture`` and ``config_class`` (with ``config_overrides``), or
    implement ``tiny_config()``, in a subclass."""

    architecture: str = ""
    config_class: str = ""
    config_overrides: dict[str, Any] = {}
    tolerance: float = 1e-4  # max |engine - transformers| relative to the logits' scale
    bfloat16_tolerance: float = 5e-2  # the same, for the engine model run in bfloat16
    block_size: int = 4
    num_blocks: int = 128
    prompt_lens: tuple[int, ...] = (5, 11, 17)
    decode_steps: int = 4
    chunks: tuple[int, ...] = (7, 6, 6)  # a prompt computed over several steps
    expects_sliding_window: bool = False  # the config must make a window matter
    quantize_config: QuantizeConfig = QuantizeConfig(bits=4, group_size=32, desc_act=True)

    # --- building ---------------------------------------------------------------------

    def tiny_config(self) -> Any:
        if not self.config_class:
            raise NotImplementedError("set config_class or return a small PretrainedConfig")
        try:
            return tiny_config(self.config_class, **self.config_overrides)
        except LookupError as exc:
            pytest.skip(str(exc))

    def make_registry(self) -> Registry:
        return load_plugins()

    def engine_model_class(self, registry: Registry, config: Any) -> Any:
        """What the spec names as ``engine_model`` (a class or a dispatcher)."""
        path = registry.architectures[self.architecture].engine_model
        assert path, f"architecture {self.architecture!r} names no engine_model"
        module, _, attribute = path.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def reference_model(self, config: Any, seed: int = 0) -> nn.Module:
        """The transformers model with random weights large enough to matter."""
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=gen)
                if param.dim() == 1 and "norm" in name:
                    param.copy_(1 + 0.2 * noise)
                elif param.dim() == 1:
                    param.copy_(0.2 * noise)
                else:
                    param.copy_(noise / math.sqrt(param.shape[-1]))
        return model.float().eval()

    def engine_model(
        self,
        registry: Registry,
        config: Any,
        weights: dict[str, torch.Tensor],
        dtype: torch.dtype = torch.float32,
        **ctx_fields: Any,
    ) -> EngineModel:
        ctx = ModelContext(dtype=dtype, device="cpu", registry=registry, **ctx_fields)
        model = self.engine_model_class(registry, config)(config, ctx)
        model.load_weights(weights.items())
        model.merge_projections()  # as the engine's loader does
        model.fold_input_orders()
        return model.eval()

    def prompts(self, config: Any, lens: tuple[int, ...], seed: int = 1) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed)
        return [torch.randint(0, config.vocab_size, (n,), generator=gen).tolist() for n in lens]

    def reference_logits(self, reference: nn.Module, tokens: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return reference(torch.tensor([tokens])).logits[0].float()

    def assert_close(
        self, got: torch.Tensor, expected: torch.Tensor, what: str, tolerance: float | None = None
    ) -> None:
        tolerance = self.tolerance if tolerance is None else tolerance
        assert got.shape == expected.shape, f"{what}: shape {got.shape} vs {expected.shape}"
        assert got.dtype == torch.float32, f"{what}: logits are {got.dtype}, not float32"
        scale = max(1.0, expected.abs().max().item())
        error = (got - expected).abs().max().item() / scale
        assert error < tolerance, f"{what}: relative error {error:.3g} > {tolerance}"

    # --- fixtures -----------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def registry(cls) -> Registry:
        return cls().make_registry()

    @pytest.fixture(scope="class")
    @classmethod
    def config(cls) -> Any:
        return cls().tiny_config()

    @pytest.fixture(scope="class")
    @classmethod
    def reference(cls, config) -> nn.Module:
        return cls().reference_model(config)

    @pytest.fixture
    def engine(self, registry, config, reference) -> EngineModel:
        return self.engine_model(registry, config, reference.state_dict())

    def run(self, model: EngineModel) -> PagedRun:
        return PagedRun(model, self.block_size, self.num_blocks)

    # --- the checks ---------------------------------------------------------------------

    def test_spec_names_an_engine_model(self, registry, config, engine) -> None:
        built = self.engine_model_class(registry, config)
        assert isinstance(engine, EngineModel)
        assert type(engine) is built.resolve(config)
        assert len(engine.attention_layers()) == config.num_hidden_layers
        windows = {layer.sliding_window for layer in engine.attention_layers()}
        expected = windows.pop() if len(windows) == 1 else None
        assert built.sliding_window_of(config) == expected

    def test_prefill_batch_matches_reference(self, config, reference, engine) -> None:
        prompts = self.prompts(config, self.prompt_lens)
        logits = self.run(engine).step([(str(i), p, len(p)) for i, p in enumerate(prompts)])
        for i, (prompt, got) in enumerate(zip(prompts, logits, strict=True)):
            expected = self.reference_logits(reference, prompt)
            self.assert_close(got, expected, f"prefill of sequence {i} ({len(prompt)} tokens)")

    def test_decode_steps_match_reference(self, config, reference, engine) -> None:
        seqs = self.prompts(config, self.prompt_lens)
        run = self.run(engine)
        run.step([(str(i), p, len(p)) for i, p in enumerate(seqs)])
        gen = torch.Generator().manual_seed(2)
        for step in range(self.decode_steps):
            for seq in seqs:
                seq.append(int(torch.randint(0, config.vocab_size, (1,), generator=gen)))
            logits = run.step([(str(i), s[-1:], len(s)) for i, s in enumerate(seqs)])
            for i, (seq, got) in enumerate(zip(seqs, logits, strict=True)):
                expected = self.reference_logits(reference, seq)[-1:]
                self.assert_close(got, expected, f"decode step {step} of sequence {i}")

    def test_chunked_prefill_matches_reference(self, config, reference, engine) -> None:
        """A prompt computed in chunks over several steps, beside a sequence that decodes."""
        long, other = self.prompts(config, (sum(self.chunks), self.prompt_lens[0]))
        expected_long = self.reference_logits(reference, long)
        run = self.run(engine)
        done = 0
        for step, size in enumerate(self.chunks):
            new_other = other if step == 0 else other[-1:]
            got_long, got_other = run.step(
                [("long", long[done : done + size], done + size), ("other", new_other, len(other))]
            )
            self.assert_close(
                got_long, expected_long[done : done + size], f"chunk {step} ({done}:{done + size})"
            )
            expected_other = self.reference_logits(reference, other)[-len(new_other) :]
            self.assert_close(got_other, expected_other, f"sequence beside chunk {step}")
            done += size
            other = [*other, (other[-1] * 7 + 3) % config.vocab_size]

    def test_prefix_cached_prefill_matches_reference(self, config, reference, engine) -> None:
        """Sequences whose first blocks are another's blocks, already computed."""
        bs = self.block_size
        (first,) = self.prompts(config, (4 * bs,))
        extra = self.prompts(config, (7, 1), seed=3)
        run = self.run(engine)
        run.step([("first", first, len(first))])
        partial = first[: 3 * bs] + extra[0]  # 3 shared blocks, then its own tokens
        whole = first + extra[1]  # every block shared, one new token
        run.share("partial", "first", 3)
        run.share("whole", "first", 4)
        got_partial, got_whole = run.step(
            [("partial", extra[0], len(partial)), ("whole", extra[1], len(whole))]
        )
        expected = self.reference_logits(reference, partial)[3 * bs :]
        self.assert_close(got_partial, expected, "prefill after a 3-block cached prefix")
        expected = self.reference_logits(reference, whole)[-1:]
        self.assert_close(got_whole, expected, "one token after a fully cached prefix")

    def test_sliding_window_is_exercised(self, registry, config, reference, engine) -> None:
        windows = [layer.sliding_window for layer in engine.attention_layers()]
        if not self.expects_sliding_window:
            assert not any(windows), f"unexpected sliding windows {windows}"
            return
        longest = max(self.prompt_lens)
        assert any(w and w < longest for w in windows), (
            f"windows {windows} must be shorter than the longest prompt ({longest} tokens)"
        )
        unwindowed = copy.deepcopy(config)
        unwindowed.sliding_window = None
        full = self.engine_model(registry, unwindowed, reference.state_dict())
        (prompt,) = self.prompts(config, (longest,))
        windowed_logits = self.run(engine).step([("s", prompt, longest)])[0]
        full_logits = self.run(full).step([("s", prompt, longest)])[0]
        scale = max(1.0, full_logits.abs().max().item())
        changed = (windowed_logits - full_logits).abs().max().item() / scale
        assert changed > 100 * self.tolerance, "the sliding window did not change any logit"

    def test_gptq_model_matches_dequantized_reference(self, registry, config) -> None:
        quant = self.quantize_config
        reference = self.reference_model(config, seed=4)
        spec = registry.architectures[self.architecture]
        weights = dict(reference.state_dict())
        quantized = set()
        gen = torch.Generator().manual_seed(5)
        orders: dict[tuple[str, int], torch.Tensor] = {}
        for index in range(config.num_hidden_layers):
            for sub in spec.quantized_modules:
                prefix = f"{spec.blocks_path}.{index}.{sub}"
                linear = reference.get_submodule(prefix)
                # One act-order permutation for the layers that read the same input (q, k,
                # v; gate, up), as quantizing them together gives, so they can be merged.
                key = (prefix.rpartition(".")[0], linear.weight.shape[1])
                if key not in orders:
                    orders[key] = torch.randperm(linear.weight.shape[1], generator=gen)
                tensors = _quantize(linear.weight.detach(), quant, orders[key])
                with torch.no_grad():
                    linear.weight.copy_(
                        dequantize(
                            tensors["qweight"],
                            tensors["qzeros"],
                            tensors["scales"],
                            tensors["g_idx"],
                            quant.bits,
                            dtype=torch.float32,
                        ).t()
                    )
                del weights[f"{prefix}.weight"]
                weights.update({f"{prefix}.{k}": v for k, v in tensors.items()})
                quantized.add(prefix)
        engine = self.engine_model(
            registry, config, weights, quant=quant, quantized=frozenset(quantized)
        )
        # Every quantized layer is GPTQ in the engine (some merged: count output features).
        gptq = [m for m in engine.modules() if type(m).__name__ == "QuantLinear"]
        widths = sum(reference.get_submodule(p).weight.shape[0] for p in quantized)
        assert sum(m.out_features for m in gptq) == widths
        prompts = self.prompts(config, self.prompt_lens)
        logits = self.run(engine).step([(str(i), p, len(p)) for i, p in enumerate(prompts)])
        for i, (prompt, got) in enumerate(zip(prompts, logits, strict=True)):
            expected = self.reference_logits(reference, prompt)
            self.assert_close(got, expected, f"GPTQ prefill of sequence {i}")

    def test_bfloat16_model_stays_close(self, registry, config, reference) -> None:
        """Weights, activations and KV cache in bfloat16 (the CPU kernels' dtype)."""
        engine = self.engine_model(registry, config, reference.state_dict(), torch.bfloat16)
        prompts = self.prompts(config, self.prompt_lens)
        logits = self.run(engine).step([(str(i), p, len(p)) for i, p in enumerate(prompts)])
        for i, (prompt, got) in enumerate(zip(prompts, logits, strict=True)):
            expected = self.reference_logits(reference, prompt)
            self.assert_close(got, expected, f"bfloat16 prefill {i}", self.bfloat16_tolerance)

    def test_loads_a_saved_checkpoint(self, registry, config, tmp_path: Path) -> None:
        """Checkpoint names as save_pretrained writes them (tied heads left out, ...)."""
        transformers = pytest.importorskip("transformers")
        from safetensors.torch import load_file

        folder = write_tiny_model(tmp_path / "model", config)
        reference = transformers.AutoModelForCausalLM.from_pretrained(
            folder, attn_implementation="eager", dtype=torch.float32
        ).eval()
        weights: dict[str, torch.Tensor] = {}
        for path in sorted(folder.glob("*.safetensors")):
            weights.update(load_file(path))
        engine = self.engine_model(registry, config, weights)
        prompts = self.prompts(config, self.prompt_lens[:2])
        logits = self.run(engine).step([(str(i), p, len(p)) for i, p in enumerate(prompts)])
        for prompt, got in zip(prompts, logits, strict=True):
            self.assert_close(got, self.reference_logits(reference, prompt), "saved checkpoint")


def _quantize(
    weight: torch.Tensor, quant: QuantizeConfig, order: torch.Tensor
) -> dict[str, torch.Tensor]:
    """RTN GPTQ tensors of ``weight`` (act-order groups through ``order`` when
    ``quant.desc_act``)."""
    in_features = weight.shape[1]
    g_idx = None
    if quant.desc_act and quant.group_size != -1:
        g_idx = torch.empty(in_features, dtype=torch.int32)
        g_idx[order] = (torch.arange(in_features) // quant.group_size).to(torch.int32)
    quantized = quantize_rtn(weight, quant.bits, quant.group_size, quant.sym, g_idx)
    return pack(quantized, scale_dtype=torch.float32)
