"""``EngineModel``: the base of ferrule's serving models.

An engine model runs flat token batches: ``forward(input_ids[T], positions[T], batch)``
returns the final hidden states ``[T, hidden]`` of the new tokens, and
``compute_logits(hidden[N, hidden])`` the float32 next-token logits of the rows the runner
picked (``batch.logits_indices``). Module names mirror the Hugging Face model's, so a
checkpoint (float or GPTQ) loads by name through :meth:`EngineModel.load_weights`.

Per-family quirks are class data: ``weight_map`` (checkpoint-name regex -> replacement,
applied in order), ``ignored_weights`` (checkpoint names to skip), ``tied_weights``
(``{tied name: source name}``, used when ``config.tie_word_embeddings`` is set).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ferrule_core.errors import FormatError
from ferrule_core.forward_batch import ForwardBatch
from ferrule_engine.layers.attention import Attention
from ferrule_engine.layers.context import ModelContext

_LISTED = 8  # names shown per kind of problem in a load error


class EngineModel(nn.Module):
    weight_map: dict[str, str] = {}
    ignored_weights: tuple[str, ...] = (r"rotary_emb\.inv_freq$", r"\.rotary_emb\.")
    tied_weights: dict[str, str] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: Any, ctx: ModelContext):
        super().__init__()
        self.config = config
        self.ctx = ctx

    # --- what subclasses implement ----------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        batch: ForwardBatch,
        input_embeds: torch.Tensor | None = None,
        embeds_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states ``[T, hidden]`` of the batch's new tokens.

        ``input_embeds [T, hidden]`` replaces the token embedding on the rows where
        ``embeds_mask [T]`` is True (all rows when the mask is None): the door for images.
        """
        raise NotImplementedError

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits ``[N, vocab]`` of ``hidden [N, hidden]``, through the model's
        ``lm_head`` (override for models without one)."""
        return self.lm_head(hidden).float()

    @classmethod
    def sliding_window_of(cls, config: Any) -> int | None:
        """The window every attention layer shares, for the KV cache manager to free blocks
        outside it; ``None`` when some layer attends to its whole context."""
        return None

    @classmethod
    def resolve(cls, config: Any) -> type[EngineModel]:
        """The class that serves ``config`` (itself; dispatchers pick by ``model_type``)."""
        return cls

    # --- shared machinery -------------------------------------------------------------

    def ties_embeddings(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False))

    def merge_projections(self) -> None:
        """Merge the layers that read the same input (q/k/v, gate/up) once the weights are
        loaded: every submodule with a ``merge_projections`` method does its own."""
        self._each_submodule("merge_projections")

    def fold_input_orders(self) -> None:
        """Fold act-order layers' input permutations into the operations that feed them, once
        loaded and merged (:mod:`ferrule_engine.layers.input_order`): every submodule with a
        ``fold_input_orders`` method does its own."""
        self._each_submodule("fold_input_orders")

    def _each_submodule(self, method: str) -> None:
        for module in list(self.modules()):
            if module is not self and hasattr(module, method):
                getattr(module, method)()

    def attention_layers(self) -> list[Attention]:
        """The attention layers in layer order (the order their KV caches are allocated in)."""
        return [m for m in self.modules() if isinstance(m, Attention)]

    def bind_kv_caches(self, caches: list[torch.Tensor]) -> None:
        """Bind one ``[2, NB, BS, Hkv, D]`` cache tensor to each attention layer, in order."""
        layers = self.attention_layers()
        if len(caches) != len(layers):
            raise ValueError(f"{len(caches)} KV caches for {len(layers)} attention layers")
        for layer, cache in zip(layers, caches, strict=True):
            layer.kv_cache = cache

    def embed(
        self,
        embedding: nn.Module,
        input_ids: torch.Tensor,
        input_embeds: torch.Tensor | None,
        embeds_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Token embeddings, replaced by ``input_embeds`` where ``embeds_mask`` says so."""
        if input_embeds is None:
            return embedding(input_ids)
        input_embeds = input_embeds.to(self.ctx.dtype)
        if embeds_mask is None:
            return input_embeds
        hidden = embedding(input_ids)
        return torch.where(embeds_mask[:, None], input_embeds, hidden)

    def checkpoint_name(self, name: str) -> str | None:
        """``name`` renamed through ``weight_map``, or None when it is ignored."""
        for pattern, replacement in self.weight_map.items():
            name = re.sub(pattern, replacement, name)
        if any(re.search(pattern, name) for pattern in self.ignored_weights):
            return None
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors into the model by name (floats converted to the model's
        dtype), then raise a :class:`FormatError` listing every missing, unexpected or
        mis-shaped tensor."""
        targets = self.state_dict(keep_vars=True)
        tied = self.tied_weights if self.ties_embeddings() else {}
        loaded: set[str] = set()
        seen_bad: set[str] = set()
        unexpected: list[str] = []
        mismatched: list[str] = []
        for raw_name, tensor in weights:
            name = self.checkpoint_name(raw_name)
            if name is None:
                continue
            target = targets.get(name)
            if target is None:
                if not self._spare_gptq_bias(name, tensor):
                    unexpected.append(raw_name)
                continue
            if tuple(target.shape) != tuple(tensor.shape):
                mismatched.append(
                    f"{raw_name}: checkpoint {tuple(tensor.shape)}, model {tuple(target.shape)}"
                )
                seen_bad.add(name)
                continue
            if target.dtype.is_floating_point != tensor.dtype.is_floating_point:
                mismatched.append(
                    f"{raw_name}: checkpoint dtype {tensor.dtype}, model {target.dtype}"
                )
                seen_bad.add(name)
                continue
            with torch.no_grad():
                target.copy_(tensor)
            loaded.add(name)
        accounted = loaded | seen_bad
        missing = [
            name
            for name in targets
            if name not in accounted and not (name in tied and tied[name] in loaded)
        ]
        problems = []
        for what, names in (
            ("missing from the checkpoint", missing),
            ("in the checkpoint but not in the model", unexpected),
            ("of the wrong shape or kind", mismatched),
        ):
            if names:
                shown = "; ".join(names[:_LISTED])
                more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
                problems.append(f"{len(names)} tensors {what}: {shown}{more}")
        if problems:
            raise FormatError(f"{type(self).__name__}.load_weights: " + ". ".join(problems))
        for module in self.modules():  # buffers changed in place: let kernels rebuild
            forget = getattr(module, "_forget_kernel", None)
            if forget is not None:
                forget()

    def _spare_gptq_bias(self, name: str, tensor: torch.Tensor) -> bool:
        """Some GPTQ writers (older AutoGPTQ) store an all-zero ``bias`` for every quantized
        layer, with or without one in the model; such a tensor changes nothing."""
        prefix, _, leaf = name.rpartition(".")
        return leaf == "bias" and self.ctx.is_quantized(prefix) and not bool(tensor.any())
