"""``ferrule generate`` and ``ferrule bench throughput`` through the installed command."""

from __future__ import annotations

import json

import pytest

from ferrule_core.testing import tiny_config, write_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = tiny_config("Qwen2Config", initializer_range=0.2)
    return write_tiny_model(tmp_path_factory.mktemp("qwen2"), config)


def test_generate_json_matches_the_python_api(ferrule, model_dir):
    from ferrule import LLM, SamplingParams

    done = ferrule(
        "generate",
        str(model_dir),
        "--prompt",
        "The quick brown fox",
        "--prompt",
        "def add(a, b):",
        "--max-tokens",
        "6",
        "--ignore-eos",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["outputs"]
    assert [len(o["token_ids"]) for o in outputs] == [6, 6]
    llm = LLM(model_dir)
    expected = llm.generate(
        ["The quick brown fox", "def add(a, b):"],
        SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
    )
    assert [o["token_ids"] for o in outputs] == [e.outputs[0].token_ids for e in expected]
    assert [o["text"] for o in outputs] == [e.outputs[0].text for e in expected]


def test_generate_names_bad_settings(ferrule, model_dir):
    done = ferrule("generate", str(model_dir), "--prompt", "hi", "--temperature", "-2")
    assert done.returncode == 1
    assert "temperature=-2" in done.stderr


def test_bench_throughput_reports_both_engines(ferrule, model_dir):
    done = ferrule(
        "bench",
        "throughput",
        str(model_dir),
        "--num-prompts",
        "6",
        "--input-len",
        "32",
        "--output-len",
        "8",
        "--spread",
        "--hf-batch-size",
        "4",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    names = [row["name"] for row in result["results"]]
    assert names == ["ferrule", "transformers"]
    useful = {row["name"]: row["useful_tokens"] for row in result["results"]}
    assert useful["ferrule"] == useful["transformers"] > 0
    assert result["ratio"] > 0 and result["settings"]["spread"] is True
