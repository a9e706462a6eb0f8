"""The real pretrained model: GPTQ's quality against the reference implementation's figures.

Slow (about 15 minutes on 2 CPU cores): fetches Qwen2.5-Coder-0.5B-Instruct once (cached),
then measures float32, RTN 4-bit and GPTQ 4-bit (act-order) perplexity under the benchmark
protocol (docs/benchmarks.md), and serves the GPTQ checkpoint with the engine: through
``LLM.chat`` (on the ``cpu-int4`` kernel) and through ``ferrule serve`` to the official
``openai`` client, it must answer sensibly.
"""

from __future__ import annotations

import pytest

from ferrule.cli.demo import REFERENCE
from ferrule.quality import SHORT_TABLE, Protocol, checkpoint_folder, quality_table


@pytest.mark.slow
@pytest.mark.timeout(3600)  # GPTQ of 24 blocks on 32 x 512 tokens takes ~10 min on 2 cores
def test_gptq_on_the_real_model_is_no_worse_than_the_reference(tmp_path, serve):
    from ferrule import assets

    protocol = Protocol(calibration=assets.calibration_text(), eval_text=assets.eval_text())
    rows = {
        row.name: row
        for row in quality_table(
            assets.real_model(), SHORT_TABLE, protocol, tmp_path, progress=False
        )
    }
    assert rows["float32"].tokens == 8 * 1023
    assert rows["float32"].perplexity == pytest.approx(REFERENCE["float32"], abs=0.01)
    assert rows["RTN 4-bit g128"].perplexity == pytest.approx(REFERENCE["RTN 4-bit g128"], rel=0.01)
    gptq = rows["GPTQ 4-bit g128, act-order"].perplexity
    assert gptq <= REFERENCE["GPTQ 4-bit g128, act-order"] * 1.01
    assert gptq < rows["RTN 4-bit g128"].perplexity
    gptq_dir = checkpoint_folder(tmp_path, "GPTQ 4-bit g128, act-order")
    _chat_with_the_gptq_checkpoint(gptq_dir)
    with serve(gptq_dir, "--served-model-name", "qwen") as url:
        from openai import OpenAI

        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="qwen",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=32,
            temperature=0,
        )
        assert "Paris" in reply.choices[0].message.content


def _chat_with_the_gptq_checkpoint(folder):
    from ferrule import LLM, SamplingParams

    llm = LLM(folder)  # GPTQ on the CPU: bfloat16 activations, the cpu-int4 kernel
    assert llm.engine.loaded.quantized
    questions = [
        "Write a Python function named is_even that returns whether a number is even.",
        "What is the capital of France? Answer with one word.",
    ]
    outputs = llm.chat(
        [[{"role": "user", "content": q}] for q in questions],
        SamplingParams(temperature=0, max_tokens=64),
    )
    code, capital = (o.outputs[0].text for o in outputs)
    assert "def is_even" in code
    assert "Paris" in capital
    kernels = {
        m.kernel_spec.name for m in llm.engine.loaded.model.modules() if hasattr(m, "qweight")
    }
    assert kernels == {"cpu-int4"}
