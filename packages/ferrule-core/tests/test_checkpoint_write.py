"""Writing GPTQ checkpoints: round trips, the files written, sharding, overwriting and atomic
writes, and the checks made before anything is written. Shared helpers are fixtures in
``conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ferrule_core import QuantizeConfig
from ferrule_core.errors import FormatError
from ferrule_core.format import quantized_layers, read_checkpoint, save_checkpoint, zeros_v2_to_v1
from ferrule_core.format.checkpoint import parse_size

# --- round trips -------------------------------------------------------------------


ROUND_TRIPS = [
    QuantizeConfig(bits=4, group_size=32, sym=True, checkpoint_format="gptq"),
    QuantizeConfig(bits=3, group_size=32, sym=True, checkpoint_format="gptq"),
    QuantizeConfig(bits=2, group_size=64, sym=True, checkpoint_format="gptq"),
    QuantizeConfig(bits=4, group_size=32, sym=False, checkpoint_format="gptq_v2"),
    QuantizeConfig(bits=3, group_size=-1, sym=False, checkpoint_format="gptq_v2"),
    QuantizeConfig(bits=8, group_size=32, sym=False, desc_act=True, checkpoint_format="gptq_v2"),
    QuantizeConfig(bits=4, group_size=32, sym=True, desc_act=True, checkpoint_format="gptq"),
]


@pytest.mark.parametrize("config", ROUND_TRIPS, ids=lambda c: f"{c.bits}b-{c.checkpoint_format}")
def test_round_trip(
    tmp_path: Path,
    config: QuantizeConfig,
    quantized_state,
    assert_same,
    q_proj,
    up_proj,
    model_config,
):
    _, tensors = quantized_state(config)
    folder = save_checkpoint(tmp_path / "ckpt", tensors, config, model_config=model_config)
    assert folder == tmp_path / "ckpt"
    read, read_config = read_checkpoint(tmp_path / "ckpt")
    assert read_config == config
    assert_same(read, tensors)  # qzeros back in v2 meaning

    on_disk = load_file(tmp_path / "ckpt" / "model.safetensors")
    for prefix in (q_proj, up_proj):
        stored, v2 = on_disk[f"{prefix}.qzeros"], tensors[f"{prefix}.qzeros"]
        if config.checkpoint_format == "gptq":
            assert torch.equal(stored, zeros_v2_to_v1(v2, config.bits))
            assert not torch.equal(stored, v2)
        else:
            assert torch.equal(stored, v2)


def test_quantized_layers_groups_by_prefix(quantized_state, q_proj, up_proj):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    layers = quantized_layers(tensors)
    assert list(layers) == [q_proj, up_proj]
    assert set(layers[q_proj]) == {"qweight", "qzeros", "scales", "g_idx"}
    assert set(layers[up_proj]) == {"qweight", "qzeros", "scales", "g_idx", "bias"}
    assert layers[up_proj]["bias"] is tensors[f"{up_proj}.bias"]


def test_files_written(tmp_path: Path, quantized_state, model_config):
    config = QuantizeConfig(bits=4, group_size=32, quant_method="rtn")
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=model_config)
    expected = {**config.to_dict(), "quant_method": "gptq"}
    assert json.loads((tmp_path / "quantize_config.json").read_text()) == expected
    written_config = json.loads((tmp_path / "config.json").read_text())
    assert written_config == {**model_config, "quantization_config": expected}
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644  # others may read
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "quantize_config.json",
    ]


def test_config_json_is_recognised_by_transformers(tmp_path: Path, quantized_state):
    transformers = pytest.importorskip("transformers")
    small = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, vocab_size=16)
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=small)  # a config object works too
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert loaded.model_type == "llama" and loaded.intermediate_size == 128
    block = loaded.quantization_config
    block = block if isinstance(block, dict) else block.to_dict()
    assert block["quant_method"] == "gptq" and block["bits"] == 4 and block["group_size"] == 32


def test_source_files_copied(tmp_path: Path, quantized_state, assert_same, model_config):
    source = tmp_path / "original"
    source.mkdir()
    copied = {
        "tokenizer.json": '{"model": {}}',
        "tokenizer_config.json": '{"eos_token": "</s>"}',
        "special_tokens_map.json": "{}",
        "tokenizer.model": "sentencepiece bytes",
        "chat_template.jinja": "{{ messages }}",
        "generation_config.json": '{"do_sample": false}',
    }
    for name, text in {**copied, "model.safetensors": "x", "notes.txt": "x"}.items():
        (source / name).write_text(text)
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path / "ckpt", tensors, config, model_config=model_config, source=source)
    for name, text in copied.items():
        assert (tmp_path / "ckpt" / name).read_text() == text
    assert not (tmp_path / "ckpt" / "notes.txt").exists()
    read, _ = read_checkpoint(tmp_path / "ckpt")  # the original's weights were not copied
    assert_same(read, tensors)


def test_source_must_be_another_folder(tmp_path: Path, quantized_state, model_config):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    with pytest.raises(NotADirectoryError, match="snapshot_download"):
        save_checkpoint(
            tmp_path / "a", tensors, config, model_config=model_config, source="org/model"
        )
    with pytest.raises(ValueError, match="overwrite the original model"):
        save_checkpoint(tmp_path, tensors, config, model_config=model_config, source=tmp_path)


# --- sharding ----------------------------------------------------------------------


def test_sharding(tmp_path: Path, quantized_state, assert_same, model_config):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=model_config, max_shard_size="3KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2
    assert files == [
        f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)
    ]
    assert not (tmp_path / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(tensors)
    sizes = {name: t.numel() * t.element_size() for name, t in tensors.items()}
    assert index["metadata"]["total_size"] == sum(sizes.values())
    for file in files:
        with safe_open(tmp_path / file, framework="pt") as handle:
            held = set(handle.keys())
            assert handle.metadata() == {"format": "pt"}
        assert held == {n for n, f in index["weight_map"].items() if f == file}
        assert sum(sizes[n] for n in held) <= 3000 or len(held) == 1
    read, _ = read_checkpoint(tmp_path)
    assert_same(read, tensors)


def test_parse_size():
    assert parse_size(123) == 123
    assert parse_size("4GB") == 4 * 10**9
    assert parse_size("2KiB") == 2048
    assert parse_size("1.5 MB") == 1_500_000
    with pytest.raises(ValueError, match="max_shard_size='4 parsecs' is not a size"):
        parse_size("4 parsecs")
    with pytest.raises(ValueError, match="must be positive"):
        parse_size(0)


# --- overwriting and atomicity -----------------------------------------------------


def make_work_area(folder: Path) -> Path:
    work = folder / ".ferrule-work"
    work.mkdir(parents=True)
    (work / "state.json").write_text('{"block": 3}')
    return work


def test_overwrite_protection_keeps_other_files(
    tmp_path: Path, quantized_state, assert_same, model_config
):
    config = QuantizeConfig(bits=4, group_size=32)
    _, first = quantized_state(config, seed=1)
    _, second = quantized_state(config, seed=2)
    work = make_work_area(tmp_path)
    (tmp_path / "README.md").write_text("mine")
    save_checkpoint(tmp_path, first, config, model_config=model_config, max_shard_size=3000)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_checkpoint(tmp_path, second, config, model_config=model_config)
    assert_same(read_checkpoint(tmp_path)[0], first)

    save_checkpoint(tmp_path, second, config, model_config=model_config, overwrite=True)
    assert_same(read_checkpoint(tmp_path)[0], second)
    # The old shards and index are gone, not left to shadow the new single file.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".ferrule-work",
        "README.md",
        "config.json",
        "model.safetensors",
        "quantize_config.json",
    ]
    assert [p.name for p in work.iterdir()] == ["state.json"]
    assert (work / "state.json").read_text() == '{"block": 3}'


def test_foreign_checkpoint_is_protected(tmp_path: Path, quantized_state, model_config):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"bits": 4}}))
    config = QuantizeConfig(bits=4, group_size=32)
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path, quantized_state(config)[1], config, model_config=model_config)


def failing_save_file(monkeypatch: pytest.MonkeyPatch, fail_on_call: int) -> list[str]:
    """Make safetensors' ``save_file`` write half a file and raise on call ``fail_on_call``."""
    import safetensors.torch

    calls: list[str] = []
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == fail_on_call:
            Path(filename).write_bytes(b"\x00" * 100)
            raise OSError("No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return calls


def test_failure_midway_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quantized_state, model_config
):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    make_work_area(tmp_path)
    calls = failing_save_file(monkeypatch, fail_on_call=2)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, tensors, config, model_config=model_config, max_shard_size=3000)
    assert len(calls) == 2 and all(Path(c).parent == tmp_path for c in calls)
    assert Path(calls[0]).name.startswith(".model-00001-of-")  # written under a temporary name
    assert [p.name for p in tmp_path.iterdir()] == [".ferrule-work"]


def test_failed_overwrite_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch, quantized_state, assert_same, model_config
):
    config = QuantizeConfig(bits=4, group_size=32)
    _, first = quantized_state(config, seed=1)
    _, second = quantized_state(config, seed=2)
    save_checkpoint(tmp_path, first, config, model_config=model_config, max_shard_size=3000)
    before = sorted(p.name for p in tmp_path.iterdir())
    failing_save_file(monkeypatch, fail_on_call=2)
    with pytest.raises(OSError):
        save_checkpoint(
            tmp_path, second, config, model_config=model_config, max_shard_size=3000, overwrite=True
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert_same(read_checkpoint(tmp_path)[0], first)


def test_v1_refuses_zero_points_of_zero(
    tmp_path: Path, quantized_state, assert_same, q_proj, model_config
):
    asym = QuantizeConfig(bits=4, group_size=32, sym=False, checkpoint_format="gptq_v2")
    _, tensors = quantized_state(asym, positive=True)  # all-positive groups: zero point 0
    v1 = QuantizeConfig(bits=4, group_size=32, sym=False, checkpoint_format="gptq")
    with pytest.raises(FormatError, match=rf"^{q_proj}\.qzeros: .*zero points are 0.*gptq_v2"):
        save_checkpoint(tmp_path / "ckpt", tensors, v1, model_config=model_config)
    assert not (tmp_path / "ckpt").exists()
    save_checkpoint(tmp_path / "ckpt", tensors, asym, model_config=model_config)
    assert_same(read_checkpoint(tmp_path / "ckpt")[0], tensors)


def test_save_checks_tensors_against_config(tmp_path: Path, quantized_state, up_proj, model_config):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    del tensors[f"{up_proj}.scales"]
    with pytest.raises(FormatError, match=rf"{up_proj}\.scales is missing"):
        save_checkpoint(tmp_path / "x", tensors, config, model_config=model_config)
    _, tensors = quantized_state(config)
    with pytest.raises(FormatError, match="says group_size=64"):
        save_checkpoint(
            tmp_path / "x",
            tensors,
            QuantizeConfig(bits=4, group_size=64),
            model_config=model_config,
        )
    assert not (tmp_path / "x").exists()
