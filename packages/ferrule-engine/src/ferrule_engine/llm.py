"""``LLM``: offline generation over the engine, the way ``vllm.LLM`` is used.

    from ferrule import LLM, SamplingParams

    llm = LLM("path/to/model-or-gptq-checkpoint")
    outputs = llm.generate(["The capital of France is"], SamplingParams(max_tokens=16))
    print(outputs[0].outputs[0].text)
    replies = llm.chat([{"role": "user", "content": "Say hello"}])

All prompts are queued at once and the engine batches them continuously; the outputs come
back in the order of the prompts.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from ferrule_core.registry import Registry
from ferrule_engine.engine import LLMEngine
from ferrule_engine.engine_config import EngineConfig
from ferrule_engine.outputs import RequestOutput
from ferrule_engine.sampling_params import SamplingParams

Prompt = str | list[int]
Message = dict[str, Any]


class LLM:
    """A model loaded for offline generation; keyword arguments are :class:`EngineConfig`'s."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        registry: Registry | None = None,
        tokenizer: Any = None,
        **engine_args: Any,
    ):
        self.engine = LLMEngine(
            model, EngineConfig(**engine_args), registry=registry, tokenizer=tokenizer
        )
        self._ids = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        priority: Sequence[int] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate for each prompt (text, or token ids); one output per prompt, in order."""
        batch = _as_prompt_list(prompts)
        params = _per_prompt(sampling_params, len(batch), "sampling_params")
        priorities = _per_prompt(priority, len(batch), "priority", default=0)
        ids = []
        for prompt, p, rank in zip(batch, params, priorities, strict=True):
            request_id = str(next(self._ids))
            self.engine.add_request(request_id, prompt, p or SamplingParams(), priority=rank)
            ids.append(request_id)
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[Message] | Sequence[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Answer one conversation (a list of messages) or several, through the tokenizer's
        chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts: list[Prompt] = []
        for conversation in conversations:
            prompts.append(
                self.chat_prompt_ids(conversation, add_generation_prompt, chat_template_kwargs)
            )
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def chat_prompt_ids(
        self,
        conversation: list[Message],
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """The token ids of ``conversation`` rendered by the chat template."""
        tokenizer = self.engine.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "this model's tokenizer has no chat template (tokenizer_config.json has no "
                "chat_template), so llm.chat cannot render messages; use llm.generate with text"
            )
        text = tokenizer.apply_chat_template(
            conversation,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **(chat_template_kwargs or {}),
        )
        return list(tokenizer(text, add_special_tokens=False).input_ids)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        wanted = set(request_ids)
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), disable=not use_tqdm, desc="generating")
        try:
            while len(done) < len(wanted):
                outputs = self.engine.step(finished_only=True)
                for output in outputs:
                    if output.finished and output.request_id in wanted:
                        done[output.request_id] = output
                        bar.update(1)
                if not outputs and not self.engine.has_unfinished_requests():
                    missing = sorted(wanted - done.keys())
                    raise RuntimeError(f"requests {missing} ended without an output")
        except BaseException:
            self.engine.abort_request([r for r in request_ids if r not in done])
            raise
        finally:
            bar.close()
        return [done[r] for r in request_ids]


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    items = list(prompts)
    if items and all(isinstance(t, int) for t in items):
        return [items]  # one prompt given as token ids
    for index, item in enumerate(items):
        if not isinstance(item, str) and not (
            isinstance(item, list) and all(isinstance(t, int) for t in item)
        ):
            raise TypeError(
                f"prompt {index} is a {type(item).__name__}; give text (str) or token ids "
                "(list[int])"
            )
    return items


def _per_prompt(value: Any, count: int, name: str, default: Any = None) -> list[Any]:
    if value is None:
        return [default] * count
    if isinstance(value, (SamplingParams, int)):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} prompts; give one each")
    return values
