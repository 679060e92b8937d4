"""Time `import_checkpoint` on full-width source checkpoints of the three projects (random weights).

    .venv/bin/python scripts/measure_import.py

The source networks come from tests/helpers/reference.py (each project's layout, rebuilt from its source).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.reference import make_project_unet  # noqa: E402

from pconv_deploy.model import load_checkpoint, parameter_count  # noqa: E402
from pconv_deploy.model.importers import import_checkpoint  # noqa: E402


def save_source(project: str, state: dict, path: Path) -> None:
    if project == "mmagic":
        torch.save({"meta": {}, "state_dict": {f"generator.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save({"n_iter": 1, "generator" if project == "xiefan-guo" else "model": state}, path)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for project in ("xiefan-guo", "naoto0804", "mmagic"):
            source = tmp / f"{project}.pth"
            save_source(project, make_project_unet(project, 7, 1.0).eval().state_dict(), source)
            start = time.perf_counter()
            result = import_checkpoint(source, tmp / f"{project}.safetensors")
            seconds = time.perf_counter() - start
            params = parameter_count(load_checkpoint(result.path)) / 1e6
            print(
                f"{project}: {source.stat().st_size / 1e6:.0f} MB source -> {result.path.stat().st_size / 1e6:.0f} MB,"
                f" {params:.2f} M parameters, import {seconds:.1f} s"
            )


if __name__ == "__main__":
    main()
