"""GPTQ checkpoint files: a folder of safetensors weights, ``quantize_config.json`` and
``config.json`` (with ``quantization_config``), laid out as AutoGPTQ, GPTQModel, optimum and
vLLM expect (see ``docs/format.md``).

In memory ferrule keeps zero points in ``gptq_v2`` meaning (the true zero point); the files
hold v1 (``z - 1``) when ``checkpoint_format="gptq"``. :func:`save_checkpoint` converts on the
way out and :func:`read_checkpoint` on the way in, so callers never see v1 zeros.

Writing is atomic per folder: every file goes to a temporary name first and is renamed into
place once all are written, ``quantize_config.json`` last, so a folder holding
``quantize_config.json`` is a complete checkpoint. Files ferrule does not write (a resumable
work area such as ``.ferrule-work/``, a README) are left alone.

The code lives in ``checkpoint_write`` (saving), ``checkpoint_read`` (reading),
``checkpoint_check`` (checking tensors against the config) and ``checkpoint_common`` (what
they share); this module gathers the public names.
"""

from ferrule_core.format.checkpoint_common import (
    CONFIG_FILE,
    INDEX_FILE,
    LAYER_PARTS,
    SINGLE_FILE,
    holds_checkpoint,
    parse_size,
    quantized_layers,
)
from ferrule_core.format.checkpoint_read import PICKLE_SUFFIXES, read_checkpoint, read_weights
from ferrule_core.format.checkpoint_write import COPIED_FILES, SHARD_PATTERN, save_checkpoint

__all__ = [
    "CONFIG_FILE",
    "COPIED_FILES",
    "INDEX_FILE",
    "LAYER_PARTS",
    "PICKLE_SUFFIXES",
    "SHARD_PATTERN",
    "SINGLE_FILE",
    "holds_checkpoint",
    "parse_size",
    "quantized_layers",
    "read_checkpoint",
    "read_weights",
    "save_checkpoint",
]
