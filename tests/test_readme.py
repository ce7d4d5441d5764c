"""README's "Layout" tree against the repository: it names every module, folder, benchmark
script and document, and nothing that does not exist.

The tree's grammar: a line whose first word is a folder (``name/``) opens it; the other
paths on that line, and on the lines indented deeper below it, are relative to that
folder (``datasets/    base.py, fov.py``; a line ``imx500/ (quantize.py ...)`` under
``export/`` names ``export/imx500/quantize.py``). A path is a word ending in ``/`` or in
one of :data:`SUFFIXES`; other words are description.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "qsegment"
SUFFIXES = (".py", ".sh", ".md", ".yaml", ".html")
_PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)*(?:/|" + "|".join(map(re.escape, SUFFIXES)) + ")")


def layout_block(readme: str) -> list[str]:
    """The lines of the first fenced block after the "## Layout" heading, minus any
    block (the pipeline sketch) that holds no ``src/`` tree."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    trees = [b for b in blocks if b.startswith("src/")]
    assert len(trees) == 1, "README's Layout section needs one ``` block starting with src/"
    return trees[0].splitlines()


def named_paths(lines: list[str], root: Path) -> set[Path]:
    """Every path the tree names, resolved by the grammar of this module's docstring."""
    named: set[Path] = set()
    folders: list[tuple[int, Path]] = []  # (indent, folder) of the lines above that opened one
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        while folders and folders[-1][0] >= indent:
            folders.pop()
        parent = folders[-1][1] if folders else root
        words = [w.strip("()[],;:`'\"") for w in line.split()]
        paths = [w for w in words if _PATH.fullmatch(w)]
        if words[0] in paths and words[0].endswith("/"):
            parent = parent / words[0]
            named.add(parent)
            folders.append((indent, parent))
            paths = paths[1:]
        named.update(parent / p for p in paths)
    return named


def required_paths() -> set[Path]:
    """What the tree must name: every .py file and folder of the package (a subpackage's
    ``__init__.py`` is its folder), every benchmark script and every document."""
    package = {p for p in PACKAGE.rglob("*")
               if "__pycache__" not in p.parts
               and (p.suffix == ".py" or (p.is_dir() and p.parent == PACKAGE)
                    or (p.is_dir() and any(p.glob("*.py"))))}
    package -= {p for p in package if p.name == "__init__.py" and p.parent != PACKAGE}
    benchmarks = {p for p in (REPO / "benchmarks").iterdir() if p.suffix in (".py", ".sh")}
    return package | benchmarks | set((REPO / "docs").glob("*.md"))


@pytest.fixture(scope="module")
def named() -> set[Path]:
    return named_paths(layout_block((REPO / "README.md").read_text()), REPO)


def test_the_layout_names_only_what_exists(named: set[Path]) -> None:
    missing = sorted(str(p.relative_to(REPO)) for p in named if not p.exists())
    assert not missing, f"README's Layout names paths that do not exist: {missing}"


def test_the_layout_names_every_module_script_and_document(named: set[Path]) -> None:
    unnamed = sorted(str(p.relative_to(REPO)) for p in required_paths() - named)
    assert not unnamed, f"README's Layout leaves out: {unnamed}"


def test_the_grammar_resolves_folders_and_nested_lines() -> None:
    lines = ["src/qsegment/", "  export/      onnx.py, tflite.py (int8 conversion),",
             "               imx500/ (quantize.py: MCT; convert.py)",
             "               publish.py", "  app.py  the page (web/index.html), s/epoch",
             "docs/          USAGE.md"]
    root = Path("/r")
    assert named_paths(lines, root) == {
        root / p for p in ("src/qsegment", "src/qsegment/export", "src/qsegment/export/onnx.py",
                           "src/qsegment/export/tflite.py", "src/qsegment/export/imx500",
                           "src/qsegment/export/imx500/quantize.py",
                           "src/qsegment/export/imx500/convert.py",
                           "src/qsegment/export/publish.py", "src/qsegment/app.py",
                           "src/qsegment/web/index.html", "docs", "docs/USAGE.md")}
