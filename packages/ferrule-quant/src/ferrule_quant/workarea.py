"""The work area that makes quantization resumable.

After each block, its packed tensors and per-layer statistics are written to
``OUT/.ferrule-work/block-00007.safetensors`` (temporary name, then rename), next to a
``manifest.json`` describing the run (model, config, method, calibration fingerprint).
A second run of the same command finds the manifest, checks it matches, and continues
after the last finished block. The work area is removed once the checkpoint is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ferrule_core import FerruleError
from ferrule_core.config import write_json_atomic

WORK_DIR = ".ferrule-work"
MANIFEST = "manifest.json"


class WorkArea:
    def __init__(self, out_dir: str | os.PathLike[str], manifest: dict[str, Any]):
        self.path = Path(out_dir) / WORK_DIR
        self.manifest = json.loads(json.dumps(manifest))  # as it will read back from disk

    def open(self) -> list[int]:
        """Create the work area, or resume it; returns the finished block indices."""
        manifest_path = self.path / MANIFEST
        if manifest_path.is_file():
            found = json.loads(manifest_path.read_text())
            if found != self.manifest:
                changed = sorted(
                    key
                    for key in set(found) | set(self.manifest)
                    if found.get(key) != self.manifest.get(key)
                )
                raise FerruleError(
                    f"{self.path} holds an interrupted run with other settings (differs in: "
                    f"{', '.join(changed)}); run the same command again to resume it, or delete "
                    f"{self.path} (or pass --restart) to start over"
                )
            return self.finished()
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest_path, self.manifest)
        return []

    def finished(self) -> list[int]:
        """Indices of saved blocks, as long as they run 0, 1, 2, ... without a gap."""
        saved = {int(p.stem.split("-")[1]) for p in self.path.glob("block-*.safetensors")}
        done = []
        while len(done) in saved:
            done.append(len(done))
        return done

    def save_block(
        self, index: int, tensors: dict[str, torch.Tensor], stats: list[dict[str, Any]]
    ) -> None:
        from safetensors.torch import save_file

        final = self._block_path(index)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")  # unique per process
        try:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                str(tmp),
                metadata={"stats": json.dumps(stats)},
            )
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load_block(self, index: int) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        from safetensors import safe_open

        with safe_open(str(self._block_path(index)), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            stats = json.loads(handle.metadata()["stats"])
        return tensors, stats

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _block_path(self, index: int) -> Path:
        return self.path / f"block-{index:05d}.safetensors"
