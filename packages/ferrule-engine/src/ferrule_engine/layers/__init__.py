"""Building blocks of engine models: flat token batches, paged KV cache, GPTQ linears.

Importing this package imports torch; the engine's entry-point module does not import it.
"""

from ferrule_engine.layers.attention import Attention, write_kv
from ferrule_engine.layers.context import ModelContext
from ferrule_engine.layers.embedding import LMHead, VocabEmbedding
from ferrule_engine.layers.linear import PARALLEL_STYLES, DenseLinear, make_linear
from ferrule_engine.layers.mlp import GatedMLP, activation
from ferrule_engine.layers.norm import LayerNorm, RMSNorm
from ferrule_engine.layers.parallel import TensorParallelGroup
from ferrule_engine.layers.rotary import RotaryEmbedding, rope_parameters

__all__ = [
    "PARALLEL_STYLES",
    "Attention",
    "DenseLinear",
    "GatedMLP",
    "LMHead",
    "LayerNorm",
    "ModelContext",
    "RMSNorm",
    "RotaryEmbedding",
    "TensorParallelGroup",
    "VocabEmbedding",
    "activation",
    "make_linear",
    "rope_parameters",
    "write_kv",
]
