"""Incremental detokenization with stop strings, one request at a time.

Decoding token by token is wrong twice over: a character of several UTF-8 bytes may span
tokens (byte-level BPE decodes its first bytes to U+FFFD), and some tokenizers decode a token
differently after a neighbour (SentencePiece drops the leading space of the first token). So,
as in vLLM and TGI, each step decodes a short window twice: the tokens from ``prefix_offset``
to ``read_offset`` (already emitted) and from ``prefix_offset`` to the end; the new text is
what the second adds to the first, held back while it ends in U+FFFD (an incomplete
character). The window starts on the last prompt tokens, so the first output token is decoded
in context. For byte-level tokenizers (GPT-2, Qwen, Llama 3) the text equals
``tokenizer.decode(output_ids)``; for SentencePiece ones it keeps the leading space that
continues the prompt, as vLLM does.

Stop strings are searched in the new text (and the characters before it that could begin one)
once ``min_tokens`` tokens are out; the text is cut before the stop string, or after it with
``include_stop_str_in_output``. While stop strings are set, :meth:`update` holds back the last
``len(longest stop) - 1`` characters, which a stop string completed later would cut, so the
streamed pieces are never taken back; :meth:`flush` releases them when the request ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ferrule_engine.stop import find_stop

_CONTEXT_TOKENS = 5  # prompt tokens decoded before the first output token
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns one request's output tokens into text as they come.

    ``tokenizer`` is a Hugging Face tokenizer (anything with ``decode(ids,
    skip_special_tokens=)``); ``params`` a :class:`~ferrule_engine.sampling_params.SamplingParams`
    (``stop``, ``include_stop_str_in_output``, ``skip_special_tokens``, ``min_tokens``).

    >>> detok = IncrementalDetokenizer(tokenizer, prompt_ids, params)  # doctest: +SKIP
    >>> piece = detok.update([token_id])  # text safe to stream
    >>> detok.stop_reason  # the stop string that ended the text, or None
    >>> rest = detok.flush()  # when the request finishes: what was held back
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int], params: Any):
        self.tokenizer = tokenizer
        self._backend = _fast_backend(tokenizer)
        self.params = params
        self.output_token_ids: list[int] = []
        self.stop_reason: str | None = None
        self._ids = [int(t) for t in prompt_token_ids[-_CONTEXT_TOKENS:]]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._text = ""
        self._released = 0  # characters of _text handed out by update / flush
        stops = list(params.stop)
        self._hold = 0
        if stops and not params.include_stop_str_in_output:
            self._hold = max(len(s) for s in stops) - 1

    @property
    def text(self) -> str:
        """All text decoded so far (cut at a stop string), held-back characters included."""
        return self._text

    @property
    def finished(self) -> bool:
        """True once a stop string ended the text; later tokens are ignored."""
        return self.stop_reason is not None

    def update(self, new_token_ids: Iterable[int], stop_terminated: bool = False) -> str:
        """Add tokens; return the new text that is safe to stream (may be empty).

        With ``stop_terminated`` the last token ended the request as a stop token id (or EOS)
        and adds no text, unless ``include_stop_str_in_output`` is set (as in vLLM).
        """
        if self.finished:
            return ""
        new_token_ids = [int(t) for t in new_token_ids]
        if stop_terminated and new_token_ids and not self.params.include_stop_str_in_output:
            new_token_ids = new_token_ids[:-1]
        for token in new_token_ids:
            self.output_token_ids.append(token)
            self._ids.append(token)
            piece = self._decode_step()
            if piece:
                self._text += piece
                if len(self.output_token_ids) >= self.params.min_tokens and self._check_stop(
                    len(piece)
                ):
                    break
        return self._release(final=self.finished)

    def flush(self) -> str:
        """Release everything held back: the stop-string margin and an incomplete character
        (decoded as U+FFFD, as ``tokenizer.decode`` does). Call it when the request ends."""
        if not self.finished and self._read_offset < len(self._ids):
            prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
            full = self._decode(self._ids[self._prefix_offset :])
            self._text += full[len(prefix) :]
            self._prefix_offset = self._read_offset = len(self._ids)
        return self._release(final=True)

    # --- internals ---------------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=self.params.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.params.skip_special_tokens)

    def _decode_step(self) -> str:
        """The text the newest token completes, or "" while a character is incomplete."""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(_REPLACEMENT):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return full[len(prefix) :]

    def _check_stop(self, new_chars: int) -> bool:
        match = find_stop(self._text, self.params.stop, new_chars)
        if match is None:
            return False
        cut = match.end if self.params.include_stop_str_in_output else match.start
        self._text = self._text[:cut]
        self.stop_reason = match.stop
        return True

    def _release(self, final: bool) -> str:
        end = len(self._text) if final else max(self._released, len(self._text) - self._hold)
        piece = self._text[self._released : end]
        self._released = end
        return piece


def _fast_backend(tokenizer: Any) -> Any:
    """The Rust ``tokenizers.Tokenizer`` behind a fast ``transformers`` tokenizer, when its
    ``decode`` gives exactly what ``tokenizer.decode`` does (no clean-up of spaces): calling
    it directly skips a few microseconds of Python per call, which counts at hundreds of
    sequences per step."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "decode"):
        return None
    if getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return None
    return backend
