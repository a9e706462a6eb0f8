"""``ModelTypeDispatch``: one engine-model name for an architecture spec that covers several
``model_type`` values, with the choice kept as data.

An ``ArchitectureSpec`` names one ``engine_model``; when its model types need different
classes (``qwen2`` and ``qwen3``), the plugin names a dispatcher instead::

    class QwenForCausalLM(ModelTypeDispatch):
        models = {"qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM}

Calling it as ``QwenForCausalLM(config, ctx)`` builds the class for ``config.model_type``;
``resolve(config)`` returns that class and ``sliding_window_of(config)`` asks it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ferrule_core.errors import ConfigError
from ferrule_engine.layers.context import ModelContext
from ferrule_engine.models.base import EngineModel


class ModelTypeDispatch:
    models: ClassVar[dict[str, type[EngineModel]]] = {}

    def __new__(cls, config: Any, ctx: ModelContext) -> EngineModel:  # type: ignore[misc]
        return cls.resolve(config)(config, ctx)

    @classmethod
    def resolve(cls, config: Any) -> type[EngineModel]:
        model_type = getattr(config, "model_type", None)
        try:
            return cls.models[model_type]
        except KeyError:
            raise ConfigError(
                f"{cls.__name__} serves model_type {', '.join(map(repr, cls.models))}, "
                f"not {model_type!r}"
            ) from None

    @classmethod
    def sliding_window_of(cls, config: Any) -> int | None:
        return cls.resolve(config).sliding_window_of(config)
