"""The public entry points' docstrings (issue #30): Google-style sections that a user can
rely on. ``Args:`` documents exactly the parameters the function takes, ``Returns:`` says
what comes back and, where the code can raise a :class:`~qsegment.errors.QsegmentError`
at the user, ``Raises:`` names exception classes that exist.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import re
from collections.abc import Callable

import pytest

from qsegment.errors import QsegmentError

# "module:qualified.name" -> whether its docstring must have a Raises section
ENTRY_POINTS = {
    "qsegment.inference.predict:Segmenter.from_pretrained": True,
    "qsegment.inference.predict:Segmenter.predict": True,
    "qsegment.inference.predict:predict_files": True,
    "qsegment.batch:segment_batch": True,
    "qsegment.batch:read_input_list": True,
    "qsegment.batch:read_batch_manifest": True,
    "qsegment.engine.evaluate:predict_samples": True,
    "qsegment.engine.evaluate:score": True,
    "qsegment.engine.evaluate:train_threshold": True,
    "qsegment.engine.evaluate:table_iv": True,
    "qsegment.engine.evaluate:int8_table": True,
    "qsegment.engine.evaluate:format_table": False,
    "qsegment.biomarkers.measures:measure": True,
    "qsegment.biomarkers.measures:pixel_size": True,
    "qsegment.biomarkers.report:measure_photograph": True,
    "qsegment.biomarkers.report:measure_prediction": True,
    "qsegment.biomarkers.report:analyze": True,
    "qsegment.biomarkers.report:write_rows": False,
    "qsegment.biomarkers.report:agreement": True,
    "qsegment.biomarkers.report:agreement_values": True,
    "qsegment.checkpoint:load_model": True,
    "qsegment.models:create_model": True,
    "qsegment.engine.train:train": True,
    "qsegment.engine.config:load_config": True,
}
_HEADING = re.compile(r"^(Args|Returns|Raises):$")
_ENTRY = re.compile(r"^    (\*{0,2}\w+):")  # an entry of a section, at its first indent


def entry_point(spec: str) -> Callable:
    module, _, qualname = spec.partition(":")
    target = importlib.import_module(module)
    for attribute in qualname.split("."):
        target = getattr(target, attribute)
    return target


def sections(doc: str) -> dict[str, list[str]]:
    """Each ``Args:``, ``Returns:`` or ``Raises:`` section of a docstring, its lines (a
    section runs to the next line that is not indented)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in doc.splitlines():
        if heading := _HEADING.match(line):
            current = found.setdefault(heading[1], [])
        elif line.strip() and not line.startswith(" "):
            current = None
        elif current is not None and line.strip():
            current.append(line)
    return found


def parameters(function: Callable) -> list[str]:
    """The names a caller passes, ``*args`` and ``**kwargs`` spelled so."""
    stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [stars.get(p.kind, "") + name
            for name, p in inspect.signature(function).parameters.items()
            if name not in ("self", "cls")]


def exception_names() -> set[str]:
    """Builtin exceptions and every QsegmentError subclass of the imported modules."""
    names = {name for name, value in vars(builtins).items()
             if isinstance(value, type) and issubclass(value, BaseException)}
    pending = [QsegmentError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending += cls.__subclasses__()
    return names


def problems(function: Callable, raises: bool) -> list[str]:
    """What the docstring of ``function`` lacks; empty when it is complete."""
    doc = inspect.getdoc(function)
    if not doc:
        return ["no docstring"]
    found = sections(doc)
    wrong = []
    if _HEADING.match(doc.splitlines()[0]):
        wrong.append("no summary before the sections")
    documented = [m[1] for line in found.get("Args", []) if (m := _ENTRY.match(line))]
    if documented != parameters(function):
        wrong.append(f"Args documents {documented}, the function takes {parameters(function)}")
    if not found.get("Returns"):
        wrong.append("no Returns section")
    if raises:
        named = [m[1] for line in found.get("Raises", []) if (m := _ENTRY.match(line))]
        if not named:
            wrong.append("no Raises section")
        if unknown := sorted(set(named) - exception_names()):
            wrong.append(f"Raises names no exception class: {unknown}")
    return wrong


@pytest.mark.parametrize("spec", list(ENTRY_POINTS))
def test_public_entry_points_document_args_returns_and_raises(spec: str) -> None:
    for module in {s.partition(":")[0] for s in ENTRY_POINTS}:  # their error classes
        importlib.import_module(module)
    assert problems(entry_point(spec), ENTRY_POINTS[spec]) == [], spec


def test_the_check_catches_a_missing_docstring_section_or_argument() -> None:
    def undocumented(path: str) -> None:
        pass

    def partial(path: str, strict: bool = False) -> int:
        """Why it exists.

        Args:
            path: the file.

        Raises:
            NoSuchError: a typo for an exception.
        """
        return 0

    assert problems(undocumented, raises=False) == ["no docstring"]
    undocumented.__doc__ = "Args:\n    path: the file.\nReturns:\n    nothing."
    assert problems(undocumented, raises=False) == ["no summary before the sections"]
    assert problems(partial, raises=True) == [
        "Args documents ['path'], the function takes ['path', 'strict']",
        "no Returns section",
        "Raises names no exception class: ['NoSuchError']"]
    partial.__doc__ = entry_point("qsegment.batch:read_input_list").__doc__
    assert problems(partial, raises=True) == [
        "Args documents ['path'], the function takes ['path', 'strict']"]
