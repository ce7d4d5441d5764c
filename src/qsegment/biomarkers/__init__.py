"""Vessel biomarkers: from a vessel map to numbers a clinician reads.

Density, length, fractal dimension, tortuosity, calibre and branching of a binary
vessel map inside its field of view, in pixels or millimetres (:mod:`.measures`:
pure functions of arrays), run over files with CSV / JSON / figures and checked
against CHASE_DB1's two human annotators (:mod:`.report`). What each number means,
with references: docs/BIOMARKERS.md.
"""

from .measures import (
    BRIDGE_LOW,
    FIELDS,
    MM_PER_DEGREE,
    BiomarkerError,
    PixelSize,
    Segment,
    VesselAnalysis,
    box_counting_dimension,
    bridge_gaps,
    measure,
    pixel_scale,
    pixel_size,
)
from .report import (
    AgreementRow,
    BiomarkerRow,
    InputError,
    SourceValues,
    agreement,
    agreement_markdown,
    agreement_table,
    agreement_values,
    analyze,
    icc_a1,
    markdown,
    measure_photograph,
    read_input,
    save_figure,
    source_differences,
    write_rows,
)

__all__ = [
    "BRIDGE_LOW",
    "FIELDS",
    "MM_PER_DEGREE",
    "AgreementRow",
    "BiomarkerError",
    "BiomarkerRow",
    "InputError",
    "PixelSize",
    "Segment",
    "SourceValues",
    "VesselAnalysis",
    "agreement",
    "agreement_markdown",
    "agreement_table",
    "agreement_values",
    "analyze",
    "box_counting_dimension",
    "bridge_gaps",
    "icc_a1",
    "markdown",
    "measure",
    "measure_photograph",
    "pixel_scale",
    "pixel_size",
    "read_input",
    "save_figure",
    "source_differences",
    "write_rows",
]


def __getattr__(name: str) -> object:
    """``Scale``, the deprecated name of :class:`PixelSize` (warns; removed in the next
    release, as is :func:`pixel_scale`)."""
    if name == "Scale":
        from .measures import _deprecated

        _deprecated("Scale", "PixelSize")
        return PixelSize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
