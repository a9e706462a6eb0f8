"""Reading GPTQ checkpoints: other tools' checkpoints (AutoGPTQ names and keys, a config only
in ``config.json``) and every read error. Shared helpers are fixtures in ``conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ferrule_core import QuantizeConfig
from ferrule_core.errors import FormatError
from ferrule_core.format import pack_cols, read_checkpoint, save_checkpoint, zeros_v2_to_v1

# --- reading: other tools' checkpoints ---------------------------------------------


def write_raw(folder: Path, tensors: dict, quantize_config: dict, name="model.safetensors"):
    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / name)
    (folder / "quantize_config.json").write_text(json.dumps(quantize_config))


def test_autogptq_file_name_old_keys_and_no_g_idx(
    tmp_path: Path, quantized_state, assert_same, model_config
):
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
    save_checkpoint(tmp_path / "new", read, read_config, model_config=model_config)
    written = json.loads((tmp_path / "new" / "quantize_config.json").read_text())
    assert written["model_file_base_name"] == "model"
    assert_same(read_checkpoint(tmp_path / "new")[0], tensors)


def test_config_only_in_config_json_and_int64_g_idx(tmp_path: Path, quantized_state, assert_same):
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
def saved(tmp_path: Path, quantized_state, model_config):
    """A saved v1 checkpoint and its tensors; tests break it and read it."""
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=model_config)
    return tmp_path, tensors


def rewrite(folder: Path, change) -> None:
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


def edit_config(folder: Path, **changes) -> None:
    path = folder / "quantize_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_tensor(saved, up_proj):
    folder, _ = saved
    rewrite(folder, lambda t: t.pop(f"{up_proj}.scales"))
    with pytest.raises(FormatError, match=rf"1 problem.*\n  - {up_proj}\.scales is missing$"):
        read_checkpoint(folder)


def test_missing_qweight(saved, q_proj):
    folder, _ = saved
    rewrite(folder, lambda t: t.pop(f"{q_proj}.qweight"))
    with pytest.raises(
        FormatError, match=rf"{q_proj}\.qweight is missing \({q_proj}\.qzeros is there\)"
    ):
        read_checkpoint(folder)


def test_missing_g_idx_with_desc_act(saved, q_proj):
    folder, _ = saved
    rewrite(folder, lambda t: t.pop(f"{q_proj}.g_idx"))
    edit_config(folder, desc_act=True)
    with pytest.raises(FormatError, match=rf"{q_proj}\.g_idx is missing, which desc_act=true"):
        read_checkpoint(folder)


def test_wrong_dtype(saved, up_proj):
    folder, _ = saved

    def change(t):
        t[f"{up_proj}.qzeros"] = t[f"{up_proj}.qzeros"].long()

    rewrite(folder, change)
    with pytest.raises(
        FormatError, match=rf"{up_proj}: qzeros has shape \(4, 8\) dtype torch.int64"
    ):
        read_checkpoint(folder)


def test_wrong_shape(saved, q_proj, up_proj):
    folder, _ = saved

    def change(t):
        t[f"{q_proj}.scales"] = torch.cat(
            [t[f"{q_proj}.scales"], t[f"{q_proj}.scales"][:, :1]], dim=1
        )
        t[f"{up_proj}.bias"] = t[f"{up_proj}.bias"][:10].clone()

    rewrite(folder, change)
    with pytest.raises(FormatError, match="2 problem") as info:
        read_checkpoint(folder)
    assert f"{q_proj}: scales has shape (2, 65)" in str(info.value)
    assert f"{up_proj}: bias has shape (10,)" in str(info.value)


def test_g_idx_out_of_range(saved, q_proj):
    folder, _ = saved

    def change(t):
        t[f"{q_proj}.g_idx"] = t[f"{q_proj}.g_idx"] + 1

    rewrite(folder, change)
    with pytest.raises(FormatError, match=rf"{q_proj}: g_idx values span \[1, 2\]"):
        read_checkpoint(folder)


@pytest.mark.parametrize(
    ("bits", "message"),
    [
        (2, r"says bits=2, but the tensors imply bits=4 \(qweight \(8, 64\)"),
        (3, r"says bits=3, but the tensors imply bits=4"),
        (8, r"says bits=8, but the tensors imply bits=4"),
    ],
)
def test_config_disagrees_on_bits(saved, bits, message, q_proj):
    folder, _ = saved
    edit_config(folder, bits=bits)
    with pytest.raises(FormatError, match=rf"{q_proj}: the quantize config {message}"):
        read_checkpoint(folder)


def test_config_disagrees_on_bits_without_g_idx(saved):
    folder, _ = saved
    rewrite(folder, lambda t: [t.pop(k) for k in list(t) if k.endswith(".g_idx")])
    edit_config(folder, bits=8)
    with pytest.raises(FormatError, match=r"says bits=8, but the tensors imply bits=4"):
        read_checkpoint(folder)


def test_config_disagrees_on_group_size(saved, up_proj):
    folder, _ = saved
    edit_config(folder, group_size=64)
    with pytest.raises(FormatError) as info:
        read_checkpoint(folder)
    assert (
        f"{up_proj}: the quantize config says group_size=64, which gives 2 groups for "
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


def test_index_names_missing_shard(tmp_path: Path, quantized_state, model_config):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=model_config, max_shard_size=3000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    count = len(set(index["weight_map"].values()))
    gone = f"model-00002-of-{count:05d}.safetensors"
    (tmp_path / gone).unlink()
    with pytest.raises(FormatError, match=rf"names shards that are missing: {gone} \(holding"):
        read_checkpoint(tmp_path)


def test_index_disagrees_with_shard(tmp_path: Path, quantized_state, model_config):
    config = QuantizeConfig(bits=4, group_size=32)
    _, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=model_config, max_shard_size=3000)
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
