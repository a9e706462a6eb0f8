"""Where the one-row GEMV's time goes: builds of ``cuda-gptq-gemv`` with one stage cut out.

    python bench/cuda_gemv_stages.py [--shapes 4096x4096,4096x14336,...]

Each variant is the extension built from a copy of ``csrc/`` with one edit to
``gptq_gemv.cu`` (its outputs are wrong; only its time counts):

- ``no-finish``: the tile's last block does not add up the split-K partial sums;
- ``no-staging``: zeros are staged in shared memory instead of x;
- ``no-dram``: every unit loads the first two word rows of its column (L1 hits), so the
  kernel runs the same instructions without reading its weights from DRAM.

For each layer at one row it prints the installed build's time (first and last), each
variant's, fp16 ``torch.matmul``'s, and every time as a ratio to fp16, timed as ``ferrule
bench kernels`` times (CUDA-graph replays rotating over weight copies larger than L2), in one
run. What a variant saves is what that stage costs in the chain.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

SHAPES = "4096x4096,4096x14336,14336x4096,28672x8192"
# (variant, text of gptq_gemv.cu, its replacement): each text occurs exactly once.
EDITS = (
    ("no-finish", "  if (splits == 1) return;\n", "  return;\n"),
    (
        "no-staging",
        "          raw[j] = load_octet(m, k);",
        "          raw[j] = make_uint4(0u, 0u, 0u, 0u);",
    ),
    ("no-dram", "u.words[j] = __ldcs(w + j * n4);", "u.words[j] = __ldg(wcol + (j & 1) * n4);"),
)


def edited_sources(root: Path, name: str, old: str, new: str) -> Path:
    from ferrule_cuda_kernels import extension

    folder = root / f"csrc-{name}"
    shutil.copytree(extension.CSRC, folder)
    source = folder / "gptq_gemv.cu"
    text = source.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{name}: gptq_gemv.cu no longer holds {old.strip()!r} once; update EDITS")
    source.write_text(text.replace(old, new))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=SHAPES)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]

    import torch

    from ferrule.kernel_bench import _copies, _quant_layers, _time_layers, _w4_bytes, time_calls
    from ferrule_cuda_kernels import extension

    sys.path.insert(0, str(Path(__file__).parent))
    from cuda_gemv_variants import build

    root = Path(tempfile.mkdtemp(prefix="ferrule-gemv-stages-"))
    installed_csrc = extension.CSRC
    modules = {}
    for name, old, new in EDITS:
        extension.CSRC = edited_sources(root, name, old, new)
        try:
            modules[name] = build(name.replace("-", "_"), [], root / name)
        finally:
            extension.CSRC = installed_csrc

    names = ["as is", *modules, "as is, again"]
    print("| K x N | " + " | ".join(f"{name} us" for name in names) + " | fp16 us |")
    print("| --- |" + " ---: |" * (len(names) + 1))
    for k, n in shapes:
        layers = _quant_layers(
            k, n, _copies(_w4_bytes(k, n, 1)), desc_act=False, kernel="cuda-gptq-gemv"
        )
        weights = [torch.randn(k, n, device="cuda", dtype=torch.float16) for _ in range(2)]
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        cells = []
        with torch.inference_mode():
            for layer in layers:
                layer(x)
            installed = layers[0]._kernel.module
            base = time_calls([lambda w=w, x=x: torch.matmul(x, w) for w in weights])
            for name in names:
                for layer in layers:
                    layer._kernel.module = modules.get(name, installed)
                    layer(x)  # a first call outside the graph
                us = _time_layers(layers, x)
                cells.append(f"{us:.2f} ({base / us:.2f}x)")
            for layer in layers:
                layer._kernel.module = installed
        print(f"| {k}x{n} | " + " | ".join(cells) + f" | {base:.1f} |", flush=True)
        del layers, weights
    print(f"GPU: {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
