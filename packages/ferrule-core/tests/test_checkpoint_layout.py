"""The layout of a saved GPTQ checkpoint, checked by an independent reader that parses the
safetensors bytes and the bitstreams with plain Python. Shared helpers are fixtures in
``conftest.py``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ferrule_core import QuantizeConfig
from ferrule_core.format import save_checkpoint

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
def test_independent_reader(tmp_path: Path, config: QuantizeConfig, quantized_state, model_config):
    layers, tensors = quantized_state(config)
    save_checkpoint(tmp_path, tensors, config, model_config=model_config)
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
