"""GPTQ checkpoint files: round trips, sharding, atomic writes, every read error, and an
independent reader that parses the safetensors bytes and the bitstreams with plain Python."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ferrule_core import QuantizeConfig
from ferrule_core.errors import FormatError
from ferrule_core.format import (
    pack,
    pack_cols,
    quantize_rtn,
    quantized_layers,
    read_checkpoint,
    save_checkpoint,
    zeros_v2_to_v1,
)
from ferrule_core.format.checkpoint import parse_size

UP = "model.layers.0.mlp.up_proj"
Q = "model.layers.0.self_attn.q_proj"
MODEL_CONFIG = {"model_type": "llama", "hidden_size": 64, "vocab_size": 16}


def act_order_g_idx(k: int, group_size: int, seed: int) -> torch.Tensor:
    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)
    return g_idx


def quantized_state(config: QuantizeConfig, seed: int = 0, positive: bool = False):
    """``(unpacked layers, state dict)``: two quantized layers (one with bias) and plain tensors.

    The state dict is in ferrule's memory convention (v2 zeros); ``lm_head`` shares storage
    with the embedding, as tied weights do.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = {Q: (64, 64), UP: (64, 128)}  # name: (out_features N, in_features K)
    layers, tensors = {}, {}
    for i, (prefix, (n, k)) in enumerate(shapes.items()):
        weight = torch.randn(n, k, generator=gen)
        weight = weight.abs() if positive else weight
        g_idx = None
        if config.desc_act:
            g_idx = act_order_g_idx(k, config.group_size, seed + i)
        q = quantize_rtn(weight, config.bits, config.group_size, sym=config.sym, g_idx=g_idx)
        layers[prefix] = q
        tensors.update({f"{prefix}.{part}": t for part, t in pack(q).items()})
    tensors[f"{UP}.bias"] = torch.randn(64, generator=gen).half()
    embed = torch.randn(16, 64, generator=gen).half()
    tensors["model.embed_tokens.weight"] = embed
    tensors["model.norm.weight"] = torch.rand(64, generator=gen)
    tensors["lm_head.weight"] = embed
    return layers, tensors


def assert_same(read: dict, expected: dict) -> None:
    assert read.keys() == expected.keys()
    for name, tensor in expected.items():
        assert read[name].dtype == tensor.dtype, name
        assert torch.equal(read[name], tensor), name


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
def test_round_trip(tmp_path: Path, config: QuantizeConfig):
    _, tensors = quantized_state(config)
    folder = save_checkpoint(tmp_path / "ckpt", tensors, config, model_config=MODEL_CONFIG)
    assert folder == tmp_path / "ckpt"
    read, read_config = read_checkpoint(tmp_path / "ckpt")
    assert read_config == config
    assert_same(read, tensors)  # qzeros back in v2 meaning

    on_disk = load_file(tmp_path / "ckpt" / "model.safetensors")
    for prefix in (Q, UP):
        stored, v2 = on_disk[f"{prefix}.qzeros"], tensors[f"{prefix}.qzeros"]
        if config.checkpoint_format == "gptq":
            assert torch.equal(stored, zeros_v2_to_v1(v2, config.bits))
            assert not torch.equal(stored, v2)
        else:
            assert torch.equal(stored, v2)


def test_quantized_layers_groups_by_prefix():
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    layers = quantized_layers(tensors)
    assert list(layers) == [Q, UP]
    assert set(layers[Q]) == {"qweight", "qzeros", "scales", "g_idx"}
    assert set(layers[UP]) == {"qweight", "qzeros", "scales", "g_idx", "bias"}
    assert layers[UP]["bias"] is tensors[f"{UP}.bias"]


def test_files_written(tmp_path: Path):
    config = QuantizeConfig(bits=4, group_size=32, quant_method="rtn")
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=MODEL_CONFIG)
    expected = {**config.to_dict(), "quant_method": "gptq"}
    assert json.loads((tmp_path / "quantize_config.json").read_text()) == expected
    model_config = json.loads((tmp_path / "config.json").read_text())
    assert model_config == {**MODEL_CONFIG, "quantization_config": expected}
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "quantize_config.json",
    ]


def test_config_json_is_recognised_by_transformers(tmp_path: Path):
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


def test_source_files_copied(tmp_path: Path):
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
    save_checkpoint(tmp_path / "ckpt", tensors, config, model_config=MODEL_CONFIG, source=source)
    for name, text in copied.items():
        assert (tmp_path / "ckpt" / name).read_text() == text
    assert not (tmp_path / "ckpt" / "notes.txt").exists()
    read, _ = read_checkpoint(tmp_path / "ckpt")  # the original's weights were not copied
    assert_same(read, tensors)


def test_source_must_be_another_folder(tmp_path: Path):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    with pytest.raises(NotADirectoryError, match="snapshot_download"):
        save_checkpoint(
            tmp_path / "a", tensors, config, model_config=MODEL_CONFIG, source="org/model"
        )
    with pytest.raises(ValueError, match="overwrite the original model"):
        save_checkpoint(tmp_path, tensors, config, model_config=MODEL_CONFIG, source=tmp_path)


# --- sharding ----------------------------------------------------------------------


def test_sharding(tmp_path: Path):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=MODEL_CONFIG, max_shard_size="3KB")
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


def test_overwrite_protection_keeps_other_files(tmp_path: Path):
    config = QuantizeConfig(bits=4, group_size=32)
    _, first = quantized_state(config, seed=1)
    _, second = quantized_state(config, seed=2)
    work = make_work_area(tmp_path)
    (tmp_path / "README.md").write_text("mine")
    save_checkpoint(tmp_path, first, config, model_config=MODEL_CONFIG, max_shard_size=3000)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_checkpoint(tmp_path, second, config, model_config=MODEL_CONFIG)
    assert_same(read_checkpoint(tmp_path)[0], first)

    save_checkpoint(tmp_path, second, config, model_config=MODEL_CONFIG, overwrite=True)
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


def test_foreign_checkpoint_is_protected(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"bits": 4}}))
    config = QuantizeConfig(bits=4, group_size=32)
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path, quantized_state(config)[1], config, model_config=MODEL_CONFIG)


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


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    make_work_area(tmp_path)
    calls = failing_save_file(monkeypatch, fail_on_call=2)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, tensors, config, model_config=MODEL_CONFIG, max_shard_size=3000)
    assert len(calls) == 2 and all(Path(c).parent == tmp_path for c in calls)
    assert Path(calls[0]).name.startswith(".model-00001-of-")  # written under a temporary name
    assert [p.name for p in tmp_path.iterdir()] == [".ferrule-work"]


def test_failed_overwrite_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch):
    config = QuantizeConfig(bits=4, group_size=32)
    _, first = quantized_state(config, seed=1)
    _, second = quantized_state(config, seed=2)
    save_checkpoint(tmp_path, first, config, model_config=MODEL_CONFIG, max_shard_size=3000)
    before = sorted(p.name for p in tmp_path.iterdir())
    failing_save_file(monkeypatch, fail_on_call=2)
    with pytest.raises(OSError):
        save_checkpoint(
            tmp_path, second, config, model_config=MODEL_CONFIG, max_shard_size=3000, overwrite=True
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert_same(read_checkpoint(tmp_path)[0], first)


def test_v1_refuses_zero_points_of_zero(tmp_path: Path):
    asym = QuantizeConfig(bits=4, group_size=32, sym=False, checkpoint_format="gptq_v2")
    _, tensors = quantized_state(asym, positive=True)  # all-positive groups: zero point 0
    v1 = QuantizeConfig(bits=4, group_size=32, sym=False, checkpoint_format="gptq")
    with pytest.raises(FormatError, match=rf"^{Q}\.qzeros: .*zero points are 0.*gptq_v2"):
        save_checkpoint(tmp_path / "ckpt", tensors, v1, model_config=MODEL_CONFIG)
    assert not (tmp_path / "ckpt").exists()
    save_checkpoint(tmp_path / "ckpt", tensors, asym, model_config=MODEL_CONFIG)
    assert_same(read_checkpoint(tmp_path / "ckpt")[0], tensors)


def test_save_checks_tensors_against_config(tmp_path: Path):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    del tensors[f"{UP}.scales"]
    with pytest.raises(FormatError, match=rf"{UP}\.scales is missing"):
        save_checkpoint(tmp_path / "x", tensors, config, model_config=MODEL_CONFIG)
    _, tensors = quantized_state(config)
    with pytest.raises(FormatError, match="says group_size=64"):
        save_checkpoint(
            tmp_path / "x",
            tensors,
            QuantizeConfig(bits=4, group_size=64),
            model_config=MODEL_CONFIG,
        )
    assert not (tmp_path / "x").exists()


# --- reading: other tools' checkpoints ---------------------------------------------


def write_raw(folder: Path, tensors: dict, quantize_config: dict, name="model.safetensors"):
    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / name)
    (folder / "quantize_config.json").write_text(json.dumps(quantize_config))


def test_autogptq_file_name_old_keys_and_no_g_idx(tmp_path: Path):
    config = QuantizeConfig(bits=4, group_size=32)
    layers, tensors = quantized_state(config)
    old = {k: v.clone() for k, v in tensors.items() if not k.endswith(".g_idx")}
    for prefix in layers:
        old[f"{prefix}.qzeros"] = zeros_v2_to_v1(old[f"{prefix}.qzeros"], 4)
    base = "gptq_model-4bit-32g"
    legacy = {"wbits": 4, "groupsize": 32, "act_order": False, "model_file_base_name": base}
    write_raw(tmp_path / "old", old, legacy, name=f"{base}.safetensors")
    read, read_config = read_checkpoint(tmp_path / "old")
    assert (read_config.bits, read_config.group_size, read_config.checkpoint_format) == (
        4,
        32,
        "gptq",
    )
    assert_same(read, tensors)  # default g_idx filled in, zeros back to v2
    for prefix, q in layers.items():
        assert torch.equal(read[f"{prefix}.qzeros"], pack_cols(q.zeros, 4))

    # Saved again by ferrule, the weights are model.safetensors and the config says so.
    save_checkpoint(tmp_path / "new", read, read_config, model_config=MODEL_CONFIG)
    written = json.loads((tmp_path / "new" / "quantize_config.json").read_text())
    assert written["model_file_base_name"] == "model"
    assert_same(read_checkpoint(tmp_path / "new")[0], tensors)


def test_config_only_in_config_json_and_int64_g_idx(tmp_path: Path):
    config = QuantizeConfig(bits=4, group_size=32, checkpoint_format="gptq_v2")
    _, tensors = quantized_state(config)
    raw = {k: v.long() if k.endswith(".g_idx") else v for k, v in tensors.items()}
    raw["lm_head.weight"] = raw["lm_head.weight"].clone()
    save_file(raw, tmp_path / "weights.safetensors")  # the only .safetensors file
    block = {"quant_method": "gptq", "bits": 4, "group_size": 32, "format": "gptq_v2"}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": block}))
    read, read_config = read_checkpoint(tmp_path)
    assert read_config.checkpoint_format == "gptq_v2"
    assert_same(read, tensors)


# --- reading: errors ---------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path):
    """A saved v1 checkpoint and its tensors; tests break it and read it."""
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=MODEL_CONFIG)
    return tmp_path, tensors


def rewrite(folder: Path, change) -> None:
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


def edit_config(folder: Path, **changes) -> None:
    path = folder / "quantize_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_tensor(saved):
    folder, _ = saved
    rewrite(folder, lambda t: t.pop(f"{UP}.scales"))
    with pytest.raises(FormatError, match=rf"1 problem.*\n  - {UP}\.scales is missing$"):
        read_checkpoint(folder)


def test_missing_qweight(saved):
    folder, _ = saved
    rewrite(folder, lambda t: t.pop(f"{Q}.qweight"))
    with pytest.raises(FormatError, match=rf"{Q}\.qweight is missing \({Q}\.qzeros is there\)"):
        read_checkpoint(folder)


def test_missing_g_idx_with_desc_act(saved):
    folder, _ = saved
    rewrite(folder, lambda t: t.pop(f"{Q}.g_idx"))
    edit_config(folder, desc_act=True)
    with pytest.raises(FormatError, match=rf"{Q}\.g_idx is missing, which desc_act=true"):
        read_checkpoint(folder)


def test_wrong_dtype(saved):
    folder, _ = saved

    def change(t):
        t[f"{UP}.qzeros"] = t[f"{UP}.qzeros"].long()

    rewrite(folder, change)
    with pytest.raises(FormatError, match=rf"{UP}: qzeros has shape \(4, 8\) dtype torch.int64"):
        read_checkpoint(folder)


def test_wrong_shape(saved):
    folder, _ = saved

    def change(t):
        t[f"{Q}.scales"] = torch.cat([t[f"{Q}.scales"], t[f"{Q}.scales"][:, :1]], dim=1)
        t[f"{UP}.bias"] = t[f"{UP}.bias"][:10].clone()

    rewrite(folder, change)
    with pytest.raises(FormatError, match="2 problem") as info:
        read_checkpoint(folder)
    assert f"{Q}: scales has shape (2, 65)" in str(info.value)
    assert f"{UP}: bias has shape (10,)" in str(info.value)


def test_g_idx_out_of_range(saved):
    folder, _ = saved

    def change(t):
        t[f"{Q}.g_idx"] = t[f"{Q}.g_idx"] + 1

    rewrite(folder, change)
    with pytest.raises(FormatError, match=rf"{Q}: g_idx values span \[1, 2\]"):
        read_checkpoint(folder)


@pytest.mark.parametrize(
    ("bits", "message"),
    [
        (2, r"says bits=2, but the tensors imply bits=4 \(qweight \(8, 64\)"),
        (3, r"says bits=3, but the tensors imply bits=4"),
        (8, r"says bits=8, but the tensors imply bits=4"),
    ],
)
def test_config_disagrees_on_bits(saved, bits, message):
    folder, _ = saved
    edit_config(folder, bits=bits)
    with pytest.raises(FormatError, match=rf"{Q}: the quantize config {message}"):
        read_checkpoint(folder)


def test_config_disagrees_on_bits_without_g_idx(saved):
    folder, _ = saved
    rewrite(folder, lambda t: [t.pop(k) for k in list(t) if k.endswith(".g_idx")])
    edit_config(folder, bits=8)
    with pytest.raises(FormatError, match=r"says bits=8, but the tensors imply bits=4"):
        read_checkpoint(folder)


def test_config_disagrees_on_group_size(saved):
    folder, _ = saved
    edit_config(folder, group_size=64)
    with pytest.raises(FormatError) as info:
        read_checkpoint(folder)
    assert (
        f"{UP}: the quantize config says group_size=64, which gives 2 groups for "
        "in_features=128, but scales has 4 rows (group_size=32 would match)"
    ) in str(info.value)


def test_truncated_file(saved):
    folder, _ = saved
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FormatError, match=r"model\.safetensors cannot be read.*looks truncated"):
        read_checkpoint(folder)


def test_corrupt_header(saved):
    folder, _ = saved
    path = folder / "model.safetensors"
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])
    with pytest.raises(FormatError, match="truncated or corrupt"):
        read_checkpoint(folder)


def test_index_names_missing_shard(tmp_path: Path):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=MODEL_CONFIG, max_shard_size=3000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    count = len(set(index["weight_map"].values()))
    gone = f"model-00002-of-{count:05d}.safetensors"
    (tmp_path / gone).unlink()
    with pytest.raises(FormatError, match=rf"names shards that are missing: {gone} \(holding"):
        read_checkpoint(tmp_path)


def test_index_disagrees_with_shard(tmp_path: Path):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=MODEL_CONFIG, max_shard_size=3000)
    path = tmp_path / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    actual = index["weight_map"]["model.norm.weight"]
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != actual)
    index["weight_map"]["model.norm.weight"] = other
    path.write_text(json.dumps(index))
    with pytest.raises(FormatError, match=rf"maps model\.norm\.weight to {other}, but"):
        read_checkpoint(tmp_path)
    path.write_text("{not json")
    with pytest.raises(FormatError, match="not a valid safetensors index"):
        read_checkpoint(tmp_path)


def test_pickles_refused(tmp_path: Path):
    (tmp_path / "quantize_config.json").write_text('{"bits": 4, "group_size": 128}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    with pytest.raises(
        FormatError,
        match=r"only as pickle files \(pytorch_model\.bin\); ferrule reads safetensors only",
    ):
        read_checkpoint(tmp_path)


def test_no_weights_or_config(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"quantize_config\.json"):
        read_checkpoint(tmp_path)
    (tmp_path / "quantize_config.json").write_text('{"bits": 4, "group_size": 128}')
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        read_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nowhere")


def test_several_unindexed_files(saved):
    folder, _ = saved
    (folder / "model.safetensors").rename(folder / "a.safetensors")
    save_file({"x": torch.zeros(1)}, folder / "b.safetensors")
    with pytest.raises(FormatError, match=r"several \.safetensors files \(a\.safetensors, b"):
        read_checkpoint(folder)


# --- an independent reader: raw bytes and bitstreams, no safetensors, no ferrule -------

NUMPY_DTYPES = {"I32": "<i4", "I64": "<i8", "F16": "<f2", "F32": "<f4"}


def parse_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The safetensors layout: u64 little-endian header length, JSON header, raw data."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    metadata = header.pop("__metadata__", {})
    data = raw[8 + length :]
    arrays = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=NUMPY_DTYPES[info["dtype"]])
        arrays[name] = array.reshape(info["shape"])
    assert max(info["data_offsets"][1] for info in header.values()) == len(data)
    return arrays, metadata


def stream_codes(words, bits: int, count: int) -> list[int]:
    """Code i is stream bits [i*bits, (i+1)*bits); stream bit b is bit b % 32 of word b // 32."""
    stream = 0
    for i, word in enumerate(words):
        stream |= (int(word) & 0xFFFFFFFF) << (32 * i)
    return [(stream >> (i * bits)) & ((1 << bits) - 1) for i in range(count)]


@pytest.mark.parametrize(
    "config",
    [
        QuantizeConfig(bits=4, group_size=32, sym=True, desc_act=True, checkpoint_format="gptq"),
        QuantizeConfig(bits=3, group_size=32, sym=True, checkpoint_format="gptq"),
        QuantizeConfig(bits=3, group_size=32, sym=False, checkpoint_format="gptq_v2"),
        QuantizeConfig(bits=4, group_size=-1, sym=False, checkpoint_format="gptq_v2"),
    ],
    ids=lambda c: f"{c.bits}b-{c.checkpoint_format}-{'sym' if c.sym else 'asym'}",
)
def test_independent_reader(tmp_path: Path, config: QuantizeConfig):
    layers, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=MODEL_CONFIG)
    arrays, metadata = parse_safetensors(tmp_path / "model.safetensors")
    assert metadata == {"format": "pt"}
    assert set(arrays) == set(tensors)
    bits = config.bits
    for prefix, q in layers.items():
        qweight, qzeros = arrays[f"{prefix}.qweight"], arrays[f"{prefix}.qzeros"]
        k, n = q.codes.shape
        assert qweight.shape == (k * bits // 32, n) and qweight.dtype == np.int32
        codes = [stream_codes(qweight[:, col], bits, k) for col in range(n)]
        assert np.array_equal(np.array(codes).T, q.codes.numpy())
        stored = np.array([stream_codes(row, bits, n) for row in qzeros])
        zeros = stored + 1 if config.checkpoint_format == "gptq" else stored  # v1 holds z - 1
        assert np.array_equal(zeros, q.zeros.numpy())
        assert np.array_equal(arrays[f"{prefix}.scales"], q.scales.half().numpy())
        assert np.array_equal(arrays[f"{prefix}.g_idx"], q.g_idx.numpy())
    assert np.array_equal(arrays["lm_head.weight"], tensors["model.embed_tokens.weight"].numpy())
    assert np.array_equal(arrays["model.norm.weight"], tensors["model.norm.weight"].numpy())
