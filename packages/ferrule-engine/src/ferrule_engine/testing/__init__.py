"""Conformance kits for engine models, which architecture plugins' tests subclass.

- :class:`EngineModelConformance`: the engine model's logits against ``transformers``
  (prefill, decode, chunked and prefix-cached prefill, sliding windows, GPTQ, bfloat16).
- :class:`EngineGenerationConformance`: whole-engine greedy generation against
  ``transformers`` ``generate``, alone and in a crowded batch (chunked prefill, preemption),
  for a float model and a GPTQ checkpoint.
"""

from ferrule_engine.testing.generation import EngineGenerationConformance, write_rtn_checkpoint
from ferrule_engine.testing.models import EngineModelConformance, PagedRun

__all__ = [
    "EngineGenerationConformance",
    "EngineModelConformance",
    "PagedRun",
    "write_rtn_checkpoint",
]
