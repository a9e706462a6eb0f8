"""The real pretrained model: GPTQ's quality against the reference implementation's figures.

Slow (about 15 minutes on 2 CPU cores): fetches Qwen2.5-Coder-0.5B-Instruct once (cached),
then measures float32, RTN 4-bit and GPTQ 4-bit (act-order) perplexity under the benchmark
protocol (docs/benchmarks.md).
"""

from __future__ import annotations

import pytest

from ferrule.cli.demo import REFERENCE
from ferrule.quality import SHORT_TABLE, Protocol, quality_table


@pytest.mark.slow
@pytest.mark.timeout(3600)  # GPTQ of 24 blocks on 32 x 512 tokens takes ~10 min on 2 cores
def test_gptq_on_the_real_model_is_no_worse_than_the_reference(tmp_path):
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
