"""Where things live: every module on its floor of docs/ARCHITECTURE.md, importing
nothing from a higher one, no import circles, and each registry is the one place a name
is written (a runtime, a dataset or an export target added in a test appears everywhere)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from qsegment.cli import main
from qsegment.datasets import FundusDataset, Split

T = TypeVar("T")

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "qsegment"
ARCHITECTURE = PACKAGE.parents[1] / "docs" / "ARCHITECTURE.md"


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


def floor_table(text: str) -> tuple[dict[str, int], dict[str, bool]]:
    """The table under "## Floors" of docs/ARCHITECTURE.md: each module or package it
    names (``runtimes/`` is ``qsegment.runtimes``) with its floor number, and with whether
    it may import PyTorch (its row's PyTorch column: "no", or "only" the modules named)."""
    section = text.split("\n## Floors", 1)[1].split("\n## ", 1)[0]
    floors: dict[str, int] = {}
    torch: dict[str, bool] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.match(r"\d+ ", cells[0]):
            continue
        names = [_dotted(n) for n in re.findall(r"`([^`]+)`", cells[1])]
        assert not set(names) & set(floors), f"on two floors: {set(names) & set(floors)}"
        floors.update(dict.fromkeys(names, int(cells[0].split()[0])))
        torch.update(dict.fromkeys(names, not cells[3].startswith(("no", "only"))))
        if cells[3].startswith("only"):
            torch.update(dict.fromkeys((_dotted(n) for n in re.findall(r"`([^`]+)`",
                                                                        cells[3])), True))
    return floors, torch


def _dotted(name: str) -> str:
    """``runtimes/`` -> ``qsegment.runtimes``; ``cli.py`` -> ``qsegment.cli``; ``__init__.py``
    -> ``qsegment``."""
    parts = name.removesuffix("/").removesuffix(".py").split("/")
    return ".".join(["qsegment", *(p for p in parts if p != "__init__")])


def row_of(module: str, table: dict[str, T]) -> T | None:
    """What ``table`` says of ``module``: its own entry, else its innermost package's (the
    root package's entry is its ``__init__.py`` alone); None where it has neither."""
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        if (prefix := ".".join(parts[:end])) in table:
            return table[prefix]
    return table.get(module)


def upward_imports(graph: dict[str, set[str]], floors: dict[str, int]) -> list[str]:
    """Every import of a module from a higher floor than its own, as a line to read."""
    return sorted(f"{module} (floor {row_of(module, floors)}) imports {imported} (floor "
                  f"{row_of(imported, floors)})"
                  for module, imports in graph.items() for imported in imports
                  if row_of(imported, floors) > row_of(module, floors))


@pytest.fixture(scope="module")
def floors() -> dict[str, int]:
    return floor_table(ARCHITECTURE.read_text())[0]


def test_every_module_stands_on_one_floor_of_the_architecture_table(floors):
    graph = import_graph()
    homeless = sorted(m for m in graph if row_of(m, floors) is None)
    assert not homeless, f"docs/ARCHITECTURE.md's floors table leaves out: {homeless}"
    missing = sorted(n for n in floors if not any(m == n or m.startswith(f"{n}.")
                                                 for m in graph))
    assert not missing, f"docs/ARCHITECTURE.md's floors table names what is not there: {missing}"
    assert row_of("qsegment.runtimes.litert", floors) < row_of("qsegment.inference.predict",
                                                               floors)


def test_no_module_imports_from_a_higher_floor(floors):
    """Imports inside functions count: a lazy import from a higher floor is one too."""
    upward = upward_imports(import_graph(), floors)
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


def test_the_floor_check_sees_an_import_from_above(floors):
    graph = {"qsegment.runtimes.litert": {"qsegment.export.tflite", "qsegment.images"},
             "qsegment.export.tflite": {"qsegment.runtimes.litert"}, "qsegment.images": set()}
    assert upward_imports(graph, floors) == [
        "qsegment.runtimes.litert (floor 1) imports qsegment.export.tflite (floor 3)"]


def test_the_floors_without_pytorch_import_none():
    """Every module of the floors that the table says need no PyTorch imports without it
    (so the inference front end runs on the base install)."""
    _, torch = floor_table(ARCHITECTURE.read_text())
    modules = sorted(m for m in import_graph() if row_of(m, torch) is False)
    assert {"qsegment.inference.predict", "qsegment.runtimes.litert"} <= set(modules)
    assert "qsegment.runtimes.pytorch" not in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_evaluation_scores_runtimes_and_builds_no_model_file():
    """Evaluation takes what a runtime gives; making its files is export's (on the same
    floor, so the floor check does not see it)."""
    graph = import_graph()
    assert {"qsegment.engine.evaluate", "qsegment.export.cpu"} <= set(graph)
    assert not {m for m in graph["qsegment.engine.evaluate"] if m.startswith("qsegment.export")}


def test_runtime_names_are_written_once(capsys):
    from qsegment.runtimes import RUNTIMES, checkpoint_runtimes

    names = checkpoint_runtimes()
    assert names[0] == "tflite-int8" and set(names) < set(RUNTIMES.names())
    for command in ("predict", "evaluate", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert all(name in text for name in names), command
    # no hand-kept list of runtime names: no list, tuple, set or dict literal anywhere but
    # the registry holds two of them ("torch" and "onnx" are also package names: not counted)
    kept = []
    for path in [*PACKAGE.rglob("*.py"), *PACKAGE.parents[1].glob("benchmarks/*.py")]:
        if path == PACKAGE / "runtimes" / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", [])
            if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)) and sum(
                    isinstance(e, ast.Constant) and e.value in RUNTIMES and "-" in e.value
                    for e in items) >= 2:
                kept.append(f"{path.name}:{node.lineno}")
    assert not kept, kept


def test_a_runtime_file_is_opened_by_its_suffix(tmp_path):
    from qsegment.runtimes import RUNTIMES, open_file
    from qsegment.runtimes.base import ModelFileError

    # an export's int8 files: MCT's ONNX for the IMX500 and the TFLite-Micro flatbuffer
    assert {i.suffix: i.name for i in RUNTIMES if i.suffix} == {".onnx": "mct-int8",
                                                                ".tflite": "tflite-micro"}
    with pytest.raises(ModelFileError, match=r"no runtime opens \.bin files"):
        open_file(tmp_path / "model.bin")


def test_an_export_target_registered_in_a_test_is_in_the_cli(tmp_path, capsys):
    from qsegment import export

    export.TARGETS.add(export.ExportTarget(
        "test-card", target=f"{__name__}:write_card",
        description="writes a note (registered by a test)", source="a weights name",
        options=(export.Option("--flavour", "what the note says"),)))
    try:
        _export_a_test_card(tmp_path, capsys)
    finally:
        export.TARGETS.remove("test-card")


def _export_a_test_card(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "test-card: writes a note (registered by a test)" in text
    assert "test-card: what the note says" in text
    assert main(["export", "qsegment-nearest", "--target", "test-card", "--flavour", "salty",
                 "-o", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "note.json").read_text()) == {
        "source": "qsegment-nearest", "flavour": "salty"}
    # an option of another target is refused, naming the target's own
    assert main(["export", "qsegment-nearest", "--target", "test-card", "--fit", "-o",
                 str(tmp_path / "other")]) == 2
    assert "--fit do(es) not apply to --target test-card" in capsys.readouterr().err


def write_card(source: str, out: Path, flavour: str = "plain") -> dict:
    """The export target a test registers."""
    Path(out).mkdir(parents=True)
    note = {"source": source, "flavour": flavour}
    (Path(out) / "note.json").write_text(json.dumps(note))
    return note


class Flat(FundusDataset):
    """The dataset a test registers: NAME.png + NAME_vessels.png, one observer."""

    name = "flat-test"
    default_split = Split(train=("a", "b"), val=("c",))

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.png") if "_" not in p.stem)

    def image_path(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def label_path(self, name: str, observer: int) -> Path:
        return self.root / f"{name}_vessels.png"


def test_a_dataset_registered_in_a_test_trains_and_evaluates(tmp_path, data_dir):
    """A dataset is one class and one row: a flat folder of NAME.png + NAME_vessels.png,
    one observer, FOV derived; evaluation and the threshold take it by its registry name
    as they take CHASE_DB1."""
    from PIL import Image

    from qsegment import load_model
    from qsegment.datasets import DATASETS, open_dataset
    from qsegment.engine.evaluate import table_iv
    from qsegment.registry import Entry

    for name, chase in (("a", "Image_01L"), ("b", "Image_02R"), ("c", "Image_11L")):
        Image.open(data_dir / f"{chase}.jpg").convert("RGB").save(tmp_path / f"{name}.png")
        shutil.copy(data_dir / f"{chase}_1stHO.png", tmp_path / f"{name}_vessels.png")
    DATASETS.add(Entry("flat-test", f"{__name__}:Flat", "a flat test folder"))
    try:
        assert "flat-test" in DATASETS.names()
        model, card = load_model("qsegment-nearest")
        result = table_iv(model, card, open_dataset(tmp_path, "flat-test"), figures=False,
                          progress=False)
        chase = table_iv(model, card, data_dir, split=Split(("Image_01L",), ("Image_11L",)),
                         figures=False, progress=False)
    finally:
        DATASETS.remove("flat-test")
    assert result["val_images"] == ["c"] and "second_observer" not in result
    ours = next(iter(result["rows"].values()))["pooled"]
    theirs = next(iter(chase["rows"].values()))["pooled"]
    # the same image: PNG (lossless re-encoding of the decoded JPEG) scores the same
    assert ours == pytest.approx(theirs, abs=1e-6) and np.isfinite(ours["dice"])
