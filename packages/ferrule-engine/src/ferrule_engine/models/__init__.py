"""Engine models: the base class, a model-type dispatcher and the generic Llama-like decoder."""

from ferrule_engine.models.base import EngineModel
from ferrule_engine.models.dispatch import ModelTypeDispatch
from ferrule_engine.models.llama_like import LlamaLikeForCausalLM

__all__ = ["EngineModel", "LlamaLikeForCausalLM", "ModelTypeDispatch"]
