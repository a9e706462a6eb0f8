"""Conformance of whole-engine generation: ferrule's greedy output equals ``transformers``'.

An architecture plugin's tests subclass :class:`EngineGenerationConformance`::

    class TestLlamaGeneration(EngineGenerationConformance):
        config_class = "LlamaConfig"

Each test writes a tiny random model folder (weights, config, an offline tokenizer), runs
the same prompts through ``transformers`` greedy ``generate`` one at a time, and through
ferrule's ``LLM`` -- each prompt alone, then all 32 together with a token budget and a KV
pool so small that prompts are prefilled in chunks and requests are preempted and
recomputed -- and requires the same tokens. The GPTQ test does the same for a GPTQ
checkpoint (round-to-nearest weights written in the GPTQ format) against ``transformers``
holding the dequantized weights.

Random models have near-ties among their logits, where float summation order alone may
pick a different token. A divergence is accepted only at a step where the reference's two
best logits lie within ``tie_tolerance`` of each other; the sequence is compared up to there.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from ferrule_core.config import QuantizeConfig
from ferrule_core.format import dequantize, pack, quantize_rtn, save_checkpoint
from ferrule_core.plugins import default_registry
from ferrule_core.testing.tiny_models import tiny_config, write_tiny_model

NUM_PROMPTS = 32


class EngineGenerationConformance:
    config_class: ClassVar[str] = ""
    config_overrides: ClassVar[dict[str, Any]] = {}
    # sharper random weights: fewer near-ties, so token-for-token comparison means more
    initializer_range: ClassVar[float] = 0.2
    tie_tolerance: ClassVar[float] = 1e-4
    gptq_bits: ClassVar[int] = 4
    gptq_group_size: ClassVar[int] = 32
    max_prompt_len: ClassVar[int] = 40
    max_output_len: ClassVar[int] = 10
    # KV blocks of 4 tokens in the crowded run; default: two longest requests' worth
    crowded_num_blocks: ClassVar[int | None] = None

    # --- fixtures --------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def model_dir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        config = tiny_config(
            cls.config_class,
            initializer_range=cls.initializer_range,
            **cls.config_overrides,
        )
        return write_tiny_model(tmp_path_factory.mktemp("float"), config)

    @pytest.fixture(scope="class")
    @classmethod
    def gptq_dir(cls, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return write_rtn_checkpoint(
            model_dir, tmp_path_factory.mktemp("gptq"), cls.gptq_bits, cls.gptq_group_size
        )

    def prompts(self, vocab_size: int) -> list[tuple[list[int], int]]:
        rng = random.Random(0)
        return [
            (
                [rng.randrange(1, vocab_size) for _ in range(rng.randint(1, self.max_prompt_len))],
                rng.randint(1, self.max_output_len),
            )
            for _ in range(NUM_PROMPTS)
        ]

    # --- tests -----------------------------------------------------------------------

    def test_greedy_matches_transformers_alone_and_in_a_crowded_batch(self, model_dir: Path):
        self._check(model_dir, reference=_hf_model(model_dir))

    def test_gptq_checkpoint_matches_the_dequantized_model(self, gptq_dir: Path):
        self._check(gptq_dir, reference=_dequantized_hf_model(gptq_dir))

    # --- the check -------------------------------------------------------------------

    def _check(self, folder: Path, reference: Any) -> None:
        from ferrule_engine.llm import LLM
        from ferrule_engine.sampling_params import SamplingParams

        requests = self.prompts(reference.config.vocab_size)
        expected = [_hf_greedy(reference, ids, n) for ids, n in requests]
        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for _, n in requests]
        prompts = [ids for ids, _ in requests]
        eos = _eos_ids(reference)

        roomy = LLM(folder, dtype="float32", num_kv_blocks=256, block_size=4)
        for index in range(NUM_PROMPTS):
            alone = roomy.generate([prompts[index]], params[index])[0]
            _same_tokens(
                alone.outputs[0].token_ids,
                expected[index],
                f"prompt {index} alone",
                self.tie_tolerance,
                eos,
            )
        del roomy

        budget = 16
        crowded = LLM(
            folder,
            dtype="float32",
            block_size=4,
            num_kv_blocks=self.crowded_num_blocks
            or 1 + (self.max_prompt_len + self.max_output_len) // 4 * 2,
            max_num_batched_tokens=budget,
            max_num_seqs=NUM_PROMPTS,
        )
        outputs = crowded.generate(prompts, params)
        for index, output in enumerate(outputs):
            _same_tokens(
                output.outputs[0].token_ids,
                expected[index],
                f"prompt {index} in batch",
                self.tie_tolerance,
                eos,
            )
        scheduler = crowded.engine.scheduler
        assert scheduler.num_preemptions > 0, "the small KV pool should have forced preemption"
        assert max(len(p) for p in prompts) > budget, "some prompt should need chunked prefill"


def _same_tokens(
    got: list[int],
    expected: tuple[list[int], list[float]],
    what: str,
    tolerance: float,
    eos: set[int],
) -> None:
    tokens, gaps = expected
    for step, (ours, theirs) in enumerate(zip(got, tokens, strict=False)):
        if ours != theirs:
            assert gaps[step] < tolerance, (
                f"{what}: token {step} is {ours}, transformers generated {theirs} "
                f"(its top-2 logit gap {gaps[step]:.2e} is no tie); ours {got}, theirs {tokens}"
            )
            return
    # transformers stops at the model's end-of-text token (its generation_config wins over
    # eos_token_id=None); ferrule was told to ignore it, so it may go on past that point.
    if len(tokens) < len(got):
        assert tokens and tokens[-1] in eos, (
            f"{what}: {len(got)} tokens, transformers {len(tokens)} without stopping at EOS"
        )
    else:
        assert len(got) == len(tokens), f"{what}: {len(got)} tokens, transformers {len(tokens)}"


def _eos_ids(model: Any) -> set[int]:
    value = model.generation_config.eos_token_id
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)


def _hf_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _hf_greedy(model: Any, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy tokens of ``transformers`` and, per step, the gap between its two best logits."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), generation_config=config)
    tokens = out.sequences[0, len(prompt) :].tolist()
    gaps = []
    for scores in out.scores:
        top = scores[0].float().topk(2).values
        gaps.append(float(top[0] - top[1]))
    return tokens, gaps


def write_rtn_checkpoint(model_dir: Path, folder: Path, bits: int, group_size: int) -> Path:
    """A GPTQ checkpoint of the model in ``model_dir``: every decoder-block linear the
    architecture plugin lists, rounded to nearest on ``bits``-bit groups."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    spec = default_registry().architecture_for(config.model_type)
    model = _hf_model(model_dir)
    state = dict(model.state_dict())
    blocks = model.get_submodule(spec.blocks_path)
    for index in range(len(blocks)):
        for name in spec.quantized_modules:
            prefix = f"{spec.blocks_path}.{index}.{name}"
            weight = state.pop(f"{prefix}.weight")
            packed = pack(
                quantize_rtn(weight, bits, group_size, sym=False), scale_dtype=torch.float32
            )
            state.update({f"{prefix}.{key}": value for key, value in packed.items()})
    quant = QuantizeConfig(
        bits=bits, group_size=group_size, sym=False, desc_act=False, checkpoint_format="gptq_v2"
    )
    return save_checkpoint(folder, state, quant, model_config=config, source=model_dir)


def _dequantized_hf_model(folder: Path) -> Any:
    """The ``transformers`` model of a GPTQ folder with every quantized weight dequantized."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ferrule_core.format import quantized_layers, read_checkpoint

    tensors, quant = read_checkpoint(folder)
    config = AutoConfig.from_pretrained(folder)
    config.quantization_config = None
    model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    layers = quantized_layers(tensors)
    state = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] not in layers}
    for prefix, layer in layers.items():
        weight = dequantize(
            layer["qweight"], layer["qzeros"], layer["scales"], layer["g_idx"], quant.bits
        )
        state[f"{prefix}.weight"] = weight.t().float()
        if "bias" in layer:
            state[f"{prefix}.bias"] = layer["bias"].float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    assert not unexpected and set(missing) <= tied, (missing, unexpected)
    model.tie_weights()
    return model
