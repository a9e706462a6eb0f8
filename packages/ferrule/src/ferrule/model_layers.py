"""The linear layers of a model folder, read from safetensors headers (no weights loaded).

With an architecture plugin for the folder's ``model_type``, its layout names the layers
to quantize; otherwise every 2-D ``.weight`` inside a numbered block list counts
(``model.layers.3.mlp.up_proj.weight``), which is where decoder blocks keep theirs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ferrule_core import FerruleError, NotRegisteredError
from ferrule_core.registry import Registry

_IN_BLOCK = re.compile(r"\.\d+\.")


def model_type(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        raise FerruleError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    return json.loads(config.read_text()).get("model_type")


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor in the folder's safetensors files."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {', '.join(pickled)}: pickled weights are not read)" if pickled else ""
        raise FerruleError(f"{folder} holds no .safetensors weights{hint}")
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as exc:  # a truncated or foreign file
            raise FerruleError(f"cannot read the safetensors header of {path}: {exc}") from exc
    return shapes


def linear_shapes(folder: Path, registry: Registry) -> dict[str, tuple[int, int]]:
    """``{layer name: (in_features, out_features)}`` of the layers GPTQ would quantize."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FerruleError(f"model folder {folder} does not exist or is not a folder")
    kind = model_type(folder)
    shapes = tensor_shapes(folder)
    try:
        spec = registry.architecture_for(kind) if kind else None
    except NotRegisteredError:
        spec = None
    if spec is not None:
        wanted = re.compile(
            re.escape(spec.blocks_path)
            + r"\.\d+\.("
            + "|".join(re.escape(name) for name in spec.quantized_modules)
            + r")\.weight$"
        )
        chosen = {n: s for n, s in shapes.items() if wanted.match(n)}
    else:
        chosen = {
            n: s
            for n, s in shapes.items()
            if n.endswith(".weight") and len(s) == 2 and _IN_BLOCK.search(n)
        }
    return {name.removesuffix(".weight"): (s[1], s[0]) for name, s in sorted(chosen.items())}
