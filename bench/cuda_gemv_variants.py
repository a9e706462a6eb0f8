"""Time builds of the CUDA extension with other compile-time constants, in one run on a GPU.

    python bench/cuda_gemv_variants.py NAME=FLAG[,FLAG...] ...
    python bench/cuda_gemv_variants.py s2=-DFERRULE_GEMV_STAGES=2,-DFERRULE_GEMV_MIN_BLOCKS=3
    python bench/cuda_gemv_variants.py --kernel cuda-gptq-mma --rows 16,64 s3=-DFERRULE_MMA_STAGES=3
    python bench/cuda_gemv_variants.py --kernel cuda-gptq-wgmma --rows 256,1024 s4=-DFERRULE_WGMMA_STAGES=4
    python bench/cuda_gemv_variants.py --act-order --rows 1,2   # act-order layers, the default build

Each ``NAME=FLAGS`` builds the extension's sources with those extra nvcc flags (the
``FERRULE_GEMV_*`` macros at the top of ``csrc/gptq_gemv.cu``, ``FERRULE_MMA_*`` in
``csrc/gptq_mma.cu``, ``FERRULE_WGMMA_*`` in ``csrc/gptq_wgmma.cu``) into its own folder; then for each Llama-3-8B-shaped layer and row count
it prints the ratio to fp16 ``torch.matmul`` of ``triton-gptq``, the installed build of
``--kernel`` (``base``) and every variant, timed as ``ferrule bench kernels`` times
(CUDA-graph replays rotating over weight copies larger than L2).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

SHAPES = ((4096, 4096), (4096, 6144), (4096, 14336), (4096, 28672), (14336, 4096), (28672, 8192))


def build(name: str, flags: list[str], folder: Path):
    import torch
    from torch.utils import cpp_extension

    from ferrule_cuda_kernels import extension

    capability = tuple(torch.cuda.get_device_capability())
    folder.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=f"ferrule_gemv_{name}",
        sources=[str(extension.CSRC / source) for source in extension.SOURCES],
        extra_cflags=list(extension.CXX_FLAGS),
        extra_cuda_cflags=[*extension.NVCC_FLAGS, *extension.arch_flags(capability), *flags],
        build_directory=str(folder),
        verbose=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", metavar="NAME=FLAGS")
    parser.add_argument("--rows", default="1,2,3", help="row counts M (1,2,3)")
    parser.add_argument(
        "--kernel",
        default="cuda-gptq-gemv",
        choices=("cuda-gptq-gemv", "cuda-gptq-mma", "cuda-gptq-wgmma"),
    )
    parser.add_argument(
        "--act-order", action="store_true", help="act-order layers (desc_act) instead of in-order"
    )
    args = parser.parse_args()

    import torch

    from ferrule.kernel_bench import _copies, _quant_layers, _w4_bytes, time_calls

    root = Path(tempfile.mkdtemp(prefix="ferrule-gemv-variants-"))
    modules = {"base": None}
    for spec in args.variants:
        name, _, flags = spec.partition("=")
        try:
            modules[name] = build(name, flags.split(","), root / name)
        except Exception as error:  # a variant that does not compile: time the others
            print(f"{name}: not built ({type(error).__name__}: {str(error)[-300:]})", flush=True)

    def timed(layers, x):
        with torch.no_grad():
            for layer in layers:
                layer(x)  # builds each layer's kernel
        return time_calls([lambda layer=layer, x=x: layer(x) for layer in layers])

    for k, n in SHAPES:
        copies = _copies(_w4_bytes(k, n, 1))
        gemv = _quant_layers(k, n, copies, desc_act=args.act_order, kernel=args.kernel)
        triton = _quant_layers(k, n, copies, desc_act=args.act_order, kernel="triton-gptq")
        weights = [torch.randn(k, n, device="cuda", dtype=torch.float16) for _ in range(2)]
        for m in (int(v) for v in args.rows.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            base = time_calls([lambda w=w, x=x: torch.matmul(x, w) for w in weights])
            line = [f"triton-gptq {base / timed(triton, x):.2f}x"]
            timed(gemv, x)
            installed = gemv[0]._kernel.module
            for name, module in modules.items():
                for layer in gemv:
                    layer._kernel.module = module or installed
                line.append(f"{name} {base / timed(gemv, x):.2f}x")
            for layer in gemv:
                layer._kernel.module = installed
            print(f"{k}x{n} M={m} fp16 {base:.1f}us: " + " ".join(line), flush=True)
        del gemv, triton
        torch.cuda.empty_cache()
    print(f"GPU: {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
