"""Shared fixtures: the real CHASE_DB1 data (read-only) and a small writable copy."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / "../shared/data/CHASEDB1").resolve()

torch.set_num_threads(2)  # the machine has 2 cores
# int8 TFLite models built during the tests go to a throw-away cache, not ~/.cache
os.environ["QSEGMENT_CACHE"] = tempfile.mkdtemp(prefix="qsegment-test-cache-")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA.is_dir(), f"CHASE_DB1 not found at {DATA}; the tests need the real data"
    return DATA


@pytest.fixture(scope="session")
def split(data_dir: Path) -> tuple:
    """(train, validation) samples of the default split, loaded once."""
    from qsegment.datasets import load_split

    return load_split(data_dir)


@pytest.fixture
def small_copy(tmp_path: Path, data_dir: Path) -> Path:
    """A writable CHASE_DB1 folder with two images, to damage in bad-input tests."""
    out = tmp_path / "chase"
    out.mkdir()
    for name in ("Image_01L", "Image_11L"):
        for suffix in (".jpg", "_1stHO.png", "_2ndHO.png"):
            shutil.copy(data_dir / f"{name}{suffix}", out / f"{name}{suffix}")
    return out
