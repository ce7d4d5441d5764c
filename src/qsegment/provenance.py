"""Where a result came from: the source checkout's commit and the toolchain's versions."""

from __future__ import annotations

import contextlib
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import __version__

TOOLCHAIN = ("model-compression-toolkit", "mct-quantizers", "torch", "onnxruntime",
             "imx500-converter", "litert-torch", "torchao", "ai-edge-litert", "tflite-micro")


def git_commit() -> str | None:
    """The source checkout's commit (with ``+dirty`` for local changes), if any."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    """Versions of qsegment and the installed toolchain, for cards and notes."""
    out = {"qsegment": __version__}
    for dist in TOOLCHAIN:
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out
