"""Calibration data: token windows drawn from text files, JSON lines, or strings.

Every source becomes one token stream (documents joined by the tokenizer's end-of-text
token), from which ``num_samples`` windows of ``seq_len`` tokens are drawn at random
positions with a seeded generator, the way the GPTQ paper draws C4 segments. Equal
lengths let the pipeline batch samples without padding.

The default source needs no network and no files: the English docstrings of Python's own
standard library, which every Python installation carries.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "stdlib-docstrings"
_STDLIB_PACKAGES = ("json", "email", "http", "logging", "asyncio", "concurrent", "importlib", "unittest", "xml", "urllib", "collections", "sqlite3", "multiprocessing", "tkinter")  # fmt: skip
_STDLIB_MODULES = ("argparse", "datetime", "decimal", "fractions", "inspect", "pathlib", "random", "statistics", "string", "textwrap", "threading", "typing", "dataclasses", "functools", "itertools", "contextlib", "subprocess", "tarfile", "zipfile", "shutil", "tempfile", "calendar", "difflib", "heapq", "bisect", "pickle", "socket", "ssl", "csv", "configparser", "pprint", "enum", "abc", "codecs", "locale", "gettext", "optparse", "imaplib", "smtplib", "ftplib", "uuid", "hashlib", "hmac", "secrets", "queue", "sched", "selectors", "signal", "traceback", "warnings", "weakref", "copy", "operator", "numbers", "math")  # fmt: skip


def load_texts(source: str | Path | Sequence[str] | None) -> list[str]:
    """Documents from ``source``: a ``.jsonl`` file (``text`` field or bare strings), any
    other text file (one document), a list of strings, or ``None`` for the default."""
    if source is None or source == DEFAULT_SOURCE:
        return stdlib_docstrings()
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"calibration file {path} does not exist; give a text file, a .jsonl file, "
                f"or leave it out to use the built-in '{DEFAULT_SOURCE}'"
            )
        if path.suffix in (".jsonl", ".json"):
            return _read_jsonl(path)
        return [path.read_text(encoding="utf-8", errors="replace")]
    texts = [t for t in source if isinstance(t, str)]
    if len(texts) != len(source):
        raise TypeError("calibration texts must all be strings")
    return texts


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        text = row.get("text") if isinstance(row, dict) else row
        if not isinstance(text, str):
            raise ValueError(
                f"{path}:{number}: each line must be a JSON string or an object with a "
                f"string 'text' field, got {type(text).__name__}"
            )
        texts.append(text)
    return texts


def stdlib_docstrings() -> list[str]:
    """The docstrings of a fixed list of standard-library modules, one document each."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [root / f"{name}.py" for name in _STDLIB_MODULES]
    for package in _STDLIB_PACKAGES:
        files.extend(sorted((root / package).glob("*.py")))
    texts = []
    for path in files:
        if not path.is_file():
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        docs = [
            ast.get_docstring(node)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        text = "\n\n".join(d for d in docs if d and len(d) > 40)
        if text:
            texts.append(text)
    if not texts:
        raise RuntimeError(f"found no standard-library sources under {root} for calibration")
    return texts


def token_stream(tokenizer, texts: Iterable[str]) -> torch.Tensor:
    """All documents tokenized without special tokens, joined by the end-of-text token."""
    separator = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        if ids and separator is not None:
            ids.append(separator)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(
    stream: torch.Tensor, num_samples: int, seq_len: int, seed: int = 0
) -> torch.Tensor:
    """``[num_samples, seq_len]`` windows at random offsets of ``stream`` (seeded)."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1 (128 is typical)")
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be at least 2 (512 or 2048 are typical)")
    if stream.numel() < seq_len:
        raise ValueError(
            f"the calibration text has {stream.numel()} tokens, fewer than seq_len={seq_len}; "
            "give more text or a shorter --seq-len"
        )
    if stream.numel() < num_samples * seq_len:
        logger.warning(
            "calibration text has %d tokens for %d samples of %d: windows will overlap",
            stream.numel(),
            num_samples,
            seq_len,
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len + 1, (num_samples,), generator=generator)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def calibration_ids(
    tokenizer, source=None, *, num_samples: int = 128, seq_len: int = 512, seed: int = 0
) -> torch.Tensor:
    """``[num_samples, seq_len]`` token ids for calibration from ``source``."""
    return sample_windows(token_stream(tokenizer, load_texts(source)), num_samples, seq_len, seed)


def fingerprint(ids: torch.Tensor) -> str:
    """A hash of calibration ids: a resumed run must calibrate on exactly the same tokens."""
    return hashlib.sha256(ids.to(torch.int64).numpy().tobytes()).hexdigest()
