"""Where things live: no import circles, and each registry is the one place a name is
written (a runtime, a dataset or an export target added in a test appears everywhere)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qsegment.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "qsegment"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, at the top or inside functions (an import
    under ``if TYPE_CHECKING:`` never runs, so it does not count)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and _is_type_checking(node) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                      for a in node.names}
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module(f) for f in files}
    return {_module(f): _imports(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "qsegment.engine.evaluate" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_evaluation_runs_models_through_the_runtime_registry_only():
    graph = import_graph()
    assert not {m for m in graph["qsegment.engine.evaluate"]
                if m.startswith(("qsegment.export", "qsegment.quantize"))}
    light = {"qsegment.images", "qsegment.card", "qsegment.datasets", "qsegment.runtimes",
             "qsegment.runtimes.base", "qsegment.files", "qsegment.provenance"}
    for module in light:  # the ground floor imports nothing above it
        assert not {m for m in graph[module] if m.startswith(("qsegment.engine",
                                                               "qsegment.export"))}, module


def test_runtime_names_are_written_once(capsys):
    from qsegment.runtimes import RUNTIMES, checkpoint_runtimes

    names = checkpoint_runtimes()
    assert names[0] == "tflite-int8" and set(names) < set(RUNTIMES)
    for command in ("predict", "evaluate", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(name in text for name in names), command
    sources = [p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
               or p.parent.name != "runtimes"]
    assert not any('"onnx-int8", "tflite-int8"' in s or '"tflite-int8", "torch"' in s
                   for s in sources)  # no hand-kept list of runtime names


def test_a_runtime_file_is_opened_by_its_suffix(tmp_path):
    from qsegment.runtimes import open_file

    with pytest.raises(ValueError, match=r"no runtime opens \.bin files"):
        open_file(tmp_path / "model.bin")


def test_an_export_target_registered_in_a_test_is_in_the_cli(tmp_path, capsys, monkeypatch):
    from qsegment import export

    monkeypatch.setattr(export, "TARGETS", dict(export.TARGETS))  # undone after the test
    monkeypatch.setattr("qsegment.cli.TARGETS", export.TARGETS)
    export.register_target(export.ExportTarget(
        "test-card", "writes a note (registered by a test)", f"{__name__}:write_card",
        "any name", options=(export.Option("--flavour", "what the note says"),)))
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "test-card: writes a note (registered by a test)" in text
    assert "test-card: what the note says" in text
    assert main(["export", "x", "--target", "test-card", "--flavour", "salty", "-o",
                 str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "note.json").read_text()) == {"source": "x",
                                                                      "flavour": "salty"}
    # an option of another target is refused, naming the target's own
    assert main(["export", "x", "--target", "test-card", "--fit", "-o",
                 str(tmp_path / "other")]) == 2
    assert "--fit do(es) not apply to --target test-card" in capsys.readouterr().err


def write_card(source: str, out: Path, flavour: str = "plain") -> dict:
    """The export target a test registers."""
    Path(out).mkdir(parents=True)
    note = {"source": source, "flavour": flavour}
    (Path(out) / "note.json").write_text(json.dumps(note))
    return note


def test_a_dataset_registered_in_a_test_trains_and_evaluates(tmp_path, data_dir):
    """A dataset is one class and one row: a flat folder of NAME.png + NAME_vessels.png,
    one observer, FOV derived; evaluation and the threshold take it as they take
    CHASE_DB1."""
    from qsegment import load_model
    from qsegment.datasets import DATASETS, FundusDataset, Split, register_dataset
    from qsegment.engine.evaluate import table_iv

    class Flat(FundusDataset):
        name = "flat-test"
        title = "a flat test folder"
        description = "NAME.png with NAME_vessels.png"
        default_split = Split(train=("a", "b"), val=("c",))

        def names(self) -> list[str]:
            return sorted(p.stem for p in self.root.glob("*.png") if "_" not in p.stem)

        def image_path(self, name: str) -> Path:
            return self.root / f"{name}.png"

        def label_path(self, name: str, observer: int) -> Path:
            return self.root / f"{name}_vessels.png"

    from PIL import Image

    for name, chase in (("a", "Image_01L"), ("b", "Image_02R"), ("c", "Image_11L")):
        Image.open(data_dir / f"{chase}.jpg").convert("RGB").save(tmp_path / f"{name}.png")
        shutil.copy(data_dir / f"{chase}_1stHO.png", tmp_path / f"{name}_vessels.png")
    register_dataset(Flat)
    try:
        model, card = load_model("qsegment-nearest")
        result = table_iv(model, card, Flat(tmp_path), figures=False, progress=False)
        chase = table_iv(model, card, data_dir, split=Split(("Image_01L",), ("Image_11L",)),
                         figures=False, progress=False)
    finally:
        del DATASETS["flat-test"]
    assert result["val_images"] == ["c"] and "second_observer" not in result
    ours = next(iter(result["rows"].values()))["pooled"]
    theirs = next(iter(chase["rows"].values()))["pooled"]
    # the same image: PNG (lossless re-encoding of the decoded JPEG) scores the same
    assert ours == pytest.approx(theirs, abs=1e-6) and np.isfinite(ours["dice"])
