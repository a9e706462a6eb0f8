"""``ferrule validate`` and ``ferrule demo`` through the installed command."""

from __future__ import annotations


def test_validate_bits_5_exits_2_and_names_valid_widths(ferrule):
    done = ferrule("validate", "--bits", "5")
    assert done.returncode == 2
    assert "bits=5" in done.stdout and "2, 3, 4, 8" in done.stdout


def test_validate_on_the_cpu_platform(ferrule):
    done = ferrule("validate", "--platform", "cpu", "--kernel", "reference")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "platform cpu; linear kernel(s): reference" in done.stdout


def test_demo_runs_every_bit_width_through_the_selected_kernel(ferrule):
    done = ferrule("check-kernels", "--in-features", "512", "--out-features", "256")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" exact ") == 4
    assert "platform: cpu" in done.stdout
    assert "cpu-int4" in done.stdout  # bf16 activations: the CPU int4 kernel serves 2-4 bits


def test_quantize_then_eval_ppl_through_the_command(ferrule, tmp_path):
    import json

    from ferrule_core.testing import tiny_config, write_tiny_model

    config = tiny_config("Qwen2Config")
    model = write_tiny_model(tmp_path / "float", config)
    text = tmp_path / "text.txt"
    text.write_text("Blocks of keys and values are cached and shared between requests. " * 80)
    done = ferrule(
        "quantize",
        str(model),
        "-o",
        str(tmp_path / "q"),
        "--method",
        "rtn",
        "--bits",
        "3",
        "--group-size",
        "32",
        "--no-sym",
        "--report",
        str(tmp_path / "report.json"),
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    assert "14 layers quantized with rtn" in done.stdout
    assert len(json.loads((tmp_path / "report.json").read_text())["layers"]) == 14
    results = {}
    for name in ("float", "q"):
        done = ferrule(
            "eval",
            "ppl",
            str(tmp_path / name),
            "--text",
            str(text),
            "--seq-len",
            "64",
            "--max-tokens",
            "512",
            "--json",
            "--quiet",
        )
        assert done.returncode == 0, done.stderr
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["q"]["tokens"] == results["float"]["tokens"] == 8 * 63
    assert results["q"]["perplexity"] != results["float"]["perplexity"]


def test_quantize_refuses_bad_settings_before_any_compute(ferrule, tmp_path):
    done = ferrule("quantize", str(tmp_path), "-o", str(tmp_path / "q"), "--bits", "5")
    assert done.returncode == 2 and "bits=5" in done.stderr
