"""The base install: the wheel with its base dependencies only segments a CHASE_DB1 image
in a fresh virtual environment, with no PyTorch installed or imported."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_base_install_predicts_without_torch(tmp_path, data_dir):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("qsegment-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, qsegment = venv / "bin" / "python", venv / "bin" / "qsegment"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=600)
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], check=True,
                            capture_output=True, text=True).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert "ai-edge-litert" in installed and not {"torch", "torchvision"} & installed
    # OpenVINO comes with it on x86-64, where the whole stays under 600 MB (issue #35)
    assert ("openvino" in installed) == (platform.machine() in ("x86_64", "AMD64"))
    site = next((venv / "lib").glob("python3*/site-packages"))
    megabytes = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 1e6
    assert megabytes < 600, f"the base install is {megabytes:.0f} MB"

    image = data_dir / "Image_11L.jpg"
    done = subprocess.run([str(qsegment), "predict", str(image), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    mask = np.asarray(Image.open(tmp_path / "out" / "Image_11L_mask.png"))
    assert mask.shape == (960, 999) and 0.05 < (mask > 0).mean() < 0.15
    # what needs PyTorch says which extra brings it
    done = subprocess.run([str(qsegment), "predict", str(image), "-o", str(tmp_path / "torch"),
                           "--runtime", "torch"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "pip install 'qsegment[train]'" in done.stderr
    done = subprocess.run([str(qsegment), "app"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "pip install 'qsegment[app]'" in done.stderr
    assert "qsegment/web/index.html" in zipfile.ZipFile(wheel).namelist()  # the app's page
