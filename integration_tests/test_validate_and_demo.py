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
