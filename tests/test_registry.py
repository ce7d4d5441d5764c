"""Every registry has one shape: rows named once, looked up by name, implementations
imported only when loaded, unknown names refused with the list of valid ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qsegment.errors import QsegmentError
from qsegment.registry import Entry, Registry, UnknownNameError


def _all_registries() -> dict[str, Registry]:
    from qsegment.datasets import DATASETS
    from qsegment.engine.config import LOSSES, OPTIMIZERS, SCHEDULERS
    from qsegment.export import TARGETS
    from qsegment.models import MODELS
    from qsegment.pretrained import WEIGHTS
    from qsegment.runtimes import RUNTIMES

    return {"architecture": MODELS, "pretrained weights": WEIGHTS, "dataset": DATASETS,
            "runtime": RUNTIMES, "export target": TARGETS, "loss": LOSSES,
            "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS}


def test_a_row_is_added_once_and_found_by_name():
    table = Registry("colour", [Entry("red", "colorsys:rgb_to_hsv", "warm")])
    table.add(Entry("blue", "colorsys:hsv_to_rgb", "cold"))
    assert table.names() == ["red", "blue"] and "blue" in table and len(table) == 2
    assert table.describe() == {"red": "warm", "blue": "cold"}
    assert table.get("blue").description == "cold"
    import colorsys

    assert table.load("red") is colorsys.rgb_to_hsv
    with pytest.raises(ValueError, match="colour 'red' is registered twice"):
        table.add(Entry("red", "colorsys:yiq_to_rgb", "again"))
    assert table.remove("red").name == "red" and table.names() == ["blue"]


def test_an_unknown_name_lists_the_valid_ones():
    table = Registry("colour", [Entry("red", "colorsys:rgb_to_hsv", "warm"),
                                Entry("blue", "colorsys:hsv_to_rgb", "cold")])
    with pytest.raises(UnknownNameError, match=r"unknown colour 'green'; choose one of: "
                                               r"red, blue$") as caught:
        table.get("green")
    assert isinstance(caught.value, QsegmentError)  # the CLI's one line and exit code 2


@pytest.mark.parametrize("kind", list(_all_registries()))
def test_every_registry_has_the_shape_and_loads_its_rows(kind):
    registry = _all_registries()[kind]
    assert isinstance(registry, Registry) and registry.kind == kind and len(registry) >= 2
    for row in registry:
        assert isinstance(row, Entry) and row.description.strip()
        loaded = row.load()  # every target names something real: code, or a shipped file
        assert loaded.is_file() if isinstance(loaded, Path) else callable(loaded), row.name
    with pytest.raises(UnknownNameError, match=f"unknown {kind} 'nope'; choose one of: "
                                               f"{registry.names()[0]}"):
        registry.get("nope")


def test_listing_names_imports_no_implementation():
    """The rows name their code as strings: listing the runtimes, datasets, targets and
    training choices (what --help does) imports neither PyTorch nor LiteRT."""
    code = ("import sys\n"
            "from qsegment.runtimes import RUNTIMES\n"
            "from qsegment.datasets import DATASETS\n"
            "from qsegment.export import TARGETS\n"
            "from qsegment.pretrained import WEIGHTS\n"
            "from qsegment.engine.config import LOSSES, OPTIMIZERS, SCHEDULERS\n"
            "for r in (RUNTIMES, DATASETS, TARGETS, WEIGHTS, LOSSES, OPTIMIZERS, SCHEDULERS):\n"
            "    r.describe()\n"
            "print(sorted(m for m in ('torch', 'ai_edge_litert', 'onnxruntime') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--out", "{tmp}/run", "--arch", "nope"], "unknown architecture 'nope'"),
    (["train", "--out", "{tmp}/run", "--loss", "nope"], "invalid choice: 'nope'"),
    (["evaluate", "--dataset", "nope"], "invalid choice: 'nope'"),
    (["predict", "{image}", "-o", "{tmp}/out", "--runtime", "nope"], "invalid choice: 'nope'"),
    (["export", "qsegment-nearest", "--target", "nope", "-o", "{tmp}/out"],
     "invalid choice: 'nope'"),
    (["evaluate", "qsegment-huge"], "qsegment-huge: no such checkpoint"),
    (["predict", "{image}", "-o", "{tmp}/out", "--scale", "foo"], "--scale"),
])
def test_an_unknown_name_on_the_command_line_is_one_line_and_exit_2(
        argv, message, tmp_path, data_dir, capsys):
    from qsegment.cli import main

    image = str(data_dir / "Image_11L.jpg")
    argv = [a.format(tmp=tmp_path, image=image) for a in argv]
    with pytest.raises(SystemExit) as caught:
        main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written
