"""The engine on a CUDA GPU: selected GPU kernels, CUDA graphs for decode, memory sizing.

The oracle is ``transformers`` greedy generation in float32 on the CPU. The engine runs on
the GPU with whatever kernels selection picks there (Triton attention, GPU GPTQ kernels) and
with decode steps replayed from CUDA graphs; its tokens must equal the oracle's up to the
first step where the oracle's two best logits are within a tolerance (GPU arithmetic sums
in another order, and float16 rounds).
"""

from __future__ import annotations

import random

import pytest
import torch

from ferrule_core.testing.tiny_models import tiny_config, write_tiny_model
from ferrule_engine.testing.generation import (
    _dequantized_hf_model,
    _eos_ids,
    _hf_greedy,
    _hf_model,
    _same_tokens,
    write_rtn_checkpoint,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

NUM_PROMPTS = 24
SIZES = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,  # head_dim 64
    "num_key_value_heads": 2,
    "initializer_range": 0.2,
    "max_position_embeddings": 512,
}


@pytest.fixture(autouse=True)
def free_gpu_memory():
    """Each engine takes most of the GPU: the previous test's must be gone first."""
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    yield
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(
        tmp_path_factory.mktemp("cuda-float"), tiny_config("LlamaConfig", **SIZES)
    )


@pytest.fixture(scope="module")
def gptq_dir(model_dir, tmp_path_factory):
    return write_rtn_checkpoint(model_dir, tmp_path_factory.mktemp("cuda-gptq"), 4, 128)


def _requests(vocab: int):
    rng = random.Random(1)
    return [
        ([rng.randrange(1, vocab) for _ in range(rng.randint(1, 60))], rng.randint(1, 24))
        for _ in range(NUM_PROMPTS)
    ]


def _check_against(reference, folder, tolerance, **engine_args):
    from ferrule_engine.llm import LLM
    from ferrule_engine.sampling_params import SamplingParams

    requests = _requests(reference.config.vocab_size)
    expected = [_hf_greedy(reference, prompt, n) for prompt, n in requests]
    # Graphs up to 32 sequences: the 24 prompts replay padded sizes, and capture stays quick.
    engine_args.setdefault("max_cudagraph_batch", 32)
    llm = LLM(str(folder), platform="cuda", **engine_args)
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for _, n in requests]
    outputs = llm.generate([p for p, _ in requests], params)
    for index, output in enumerate(outputs):
        _same_tokens(
            output.outputs[0].token_ids,
            expected[index],
            f"prompt {index}",
            tolerance,
            _eos_ids(reference),
        )
    return llm


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [("float32", 2e-2), ("float16", 1e-1), ("bfloat16", 3e-1)]
)
def test_float_model_matches_transformers_with_graphs(model_dir, dtype, tolerance):
    reference = _hf_model(model_dir)
    llm = _check_against(
        reference, model_dir, tolerance, dtype=dtype, max_num_batched_tokens=64, block_size=16
    )
    runner = llm.engine.runner
    assert runner.graphs is not None and runner.graphs.replays > 0, "decode ran from graphs"
    kernels = {
        m.kernel_spec.name
        for m in llm.engine.loaded.model.modules()
        if hasattr(m, "kernel_spec") and m.kernel_spec
    }
    assert "triton-paged-attention" in kernels, kernels


def test_eager_and_graphs_agree(model_dir):
    reference = _hf_model(model_dir)
    eager = _check_against(reference, model_dir, 1e-1, dtype="float16", enforce_eager=True)
    assert eager.engine.runner.graphs is None


def test_gptq_model_matches_dequantized_transformers(gptq_dir):
    reference = _dequantized_hf_model(gptq_dir)
    llm = _check_against(reference, gptq_dir, 1e-1, dtype="float16", max_num_batched_tokens=64)
    from ferrule_core import QuantLinear

    layers = [m for m in llm.engine.loaded.model.modules() if isinstance(m, QuantLinear)]
    used = {spec.name for layer in layers for spec in layer.kernel_specs}
    assert used and not used & {"reference"}, f"GPU kernels serve GPTQ layers, got {used}"


def test_kv_cache_is_sized_within_the_memory_fraction(model_dir):
    from ferrule_engine.llm import LLM

    torch.cuda.empty_cache()
    total = torch.cuda.mem_get_info()[1]
    llm = LLM(str(model_dir), platform="cuda", dtype="float16", gpu_memory_utilization=0.3)
    engine = llm.engine
    kv_bytes = engine.runner.num_blocks * engine.runner.bytes_per_block()
    assert kv_bytes > 0.1 * total, "most of the fraction goes to the KV cache for a tiny model"
    assert torch.cuda.memory_reserved() <= 0.3 * total + (512 << 20)


def test_too_small_a_fraction_is_refused_with_the_numbers(model_dir):
    from ferrule_core.errors import ConfigError
    from ferrule_engine.llm import LLM

    with pytest.raises(ConfigError, match=r"gpu_memory_utilization=0\.0001 .* leaves no room"):
        LLM(str(model_dir), platform="cuda", dtype="float16", gpu_memory_utilization=0.0001)
