"""The GPU benchmarks' CPU-side parts: random-shape folders, dummy weights, latency, errors."""

from __future__ import annotations

import json

import pytest
import torch

from ferrule.cli import main
from ferrule.random_model import write_random_model


def _engine(folder, **kwargs):
    from ferrule_engine.llm import LLM

    return LLM(str(folder), load_format="dummy", dtype="float32", num_kv_blocks=64, **kwargs)


def test_random_float_model_generates_with_dummy_weights(tmp_path):
    from ferrule_engine.sampling_params import SamplingParams

    folder = write_random_model(tmp_path / "m", "tiny")
    assert (folder / "config.json").is_file() and not list(folder.glob("*.safetensors"))
    llm = _engine(folder)
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=6, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 6
    # Every id detokenizes to its word: the tokenizer covers the whole vocabulary.
    assert out.outputs[0].text.split() == [f"t{t}" for t in out.outputs[0].token_ids]
    model = llm.engine.loaded.model
    embed = model.model.embed_tokens.weight
    assert 0.015 < float(embed.std()) < 0.025, "float weights ~ N(0, 0.02)"
    assert torch.all(model.model.norm.weight == 1)


@pytest.mark.parametrize("desc_act", [False, True])
def test_random_gptq_model_fills_every_quantized_layer(tmp_path, desc_act):
    from ferrule_core import QuantLinear
    from ferrule_engine.sampling_params import SamplingParams

    folder = write_random_model(tmp_path / "q", "tiny", bits=4, group_size=32, desc_act=desc_act)
    llm = _engine(folder)
    named = [
        (n, m) for n, m in llm.engine.loaded.model.named_modules() if isinstance(m, QuantLinear)
    ]
    # q/k/v and gate/up are merged once loaded (act-order ones share their permutation).
    assert len(named) == 2 * 4, "qkv, o, gate_up, down in each of 2 layers"
    for name, layer in named:
        assert bool((layer.scales > 0).all())
        assert int(layer.qweight.count_nonzero()) > 0.9 * layer.qweight.numel()
        counts = torch.bincount(layer.g_idx.long())
        assert bool((counts == 32).all()), "every group holds group_size rows"
        assert layer.out_features in (64 + 32 + 32, 64, 2 * 128), layer.out_features
        in_order = bool((layer.g_idx[1:] >= layer.g_idx[:-1]).all())
        # Act-order layers get permuted groups; all but o_proj are folded in order at load.
        assert in_order != (desc_act and name.endswith("o_proj")), name
        assert layer.desc_act == (desc_act and name.endswith("o_proj")), name
        weight = layer.dequantize_weight(torch.float64)
        assert 0.005 < float(weight.std()) < 0.05
    out = llm.generate([[1, 2, 3, 4]], SamplingParams(max_tokens=4, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("load_format", "bogus", "load_format='bogus' is not supported"),
        ("gpu_memory_utilization", 0, "must be a fraction in \\(0, 1\\]"),
        ("gpu_memory_utilization", 1.5, "must be a fraction"),
        ("max_cudagraph_batch", -1, "must be a non-negative integer"),
    ],
)
def test_engine_config_checks_the_gpu_settings(field, value, message):
    from ferrule_core.errors import ConfigError
    from ferrule_engine.engine_config import EngineConfig

    with pytest.raises(ConfigError, match=message):
        EngineConfig(**{field: value})


def test_unknown_shape_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit, match="shape='llama9' is not known: use one of llama3-8b"):
        main(["bench", "random-model", str(tmp_path / "x"), "--shape", "llama9"])


def test_latency_cli_reports_json(tmp_path, capsys):
    folder = tmp_path / "m"
    assert main(["bench", "random-model", str(folder), "--shape", "tiny"]) == 0
    capsys.readouterr()
    code = main(
        [
            "bench",
            "latency",
            str(folder),
            "--load-format",
            "dummy",
            "--dtype",
            "float32",
            "--batch-size",
            "2",
            "--input-len",
            "16",
            "--output-len",
            "5",
            "--iterations",
            "2",
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["batch_size"] == 2 and len(report["runs"]) == 2
    assert report["decode_tokens_per_s"] > 0 and report["prefill_s"] > 0
    assert report["settings"]["cuda_graphs"] is False


def test_latency_refuses_a_zero_batch(tmp_path):
    folder = write_random_model(tmp_path / "m", "tiny")
    with pytest.raises(SystemExit, match="batch_size=0 must be at least 1"):
        main(["bench", "latency", str(folder), "--load-format", "dummy", "--batch-size", "0"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shapes", "4096by4096"], "is not KxN"),
        (["--rows", "1,x"], "must be integers"),
        (["--rows", "0"], "must list positive integers"),
    ],
)
def test_kernel_bench_arguments_are_checked(args, message):
    with pytest.raises(SystemExit, match=message):
        main(["bench", "kernels", *args])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_kernel_bench_needs_a_gpu():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        main(["bench", "kernels", "--shapes", "256x256", "--rows", "1"])


def test_kernel_bench_times_each_candidate_twice_in_mirrored_order(capsys):
    from ferrule.kernel_bench import balanced_times

    calls = []

    def timer(name, base):
        def time():
            calls.append(name)
            return base + len(calls)  # a clock that drifts by 1 a timing

        return time

    def broken():
        raise RuntimeError("no kernel")

    times = balanced_times({"fp16": timer("fp16", 10), "ours": timer("ours", 5), "x": broken})
    assert calls == ["fp16", "ours", "ours", "fp16"]
    # fp16 at drift 1 and 4, ours at 2 and 3: the drift adds the same 2.5 to both
    assert times == {"fp16": 12.5, "ours": 7.5}
    assert "x: RuntimeError: no kernel" in capsys.readouterr().out
