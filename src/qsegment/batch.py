"""Segmenting photographs by the hundred thousand on Ray: ``qsegment batch``.

The driver lists the work (each input with its output files, named as ``qsegment
predict`` names them) and hands it to Ray Data, whose pool of actors each hold one
:class:`~qsegment.inference.predict.Segmenter`, loaded once, its int8 interpreter on the
actor's CPUs. An actor writes an image's PNGs atomically and only then its record,
``DIR/.records/NAME.json``: the manifest row with each output's SHA-256 and the settings.
An image whose record has the same settings and whose files still match the checksums is
complete, and is never segmented again. So a worker killed mid-batch (Ray restarts it and
retries the batch) or an interrupted run leaves each image either complete or without a
record, and rerunning the same command finishes the rest. The rows stream back to the
driver, which writes ``DIR/manifest.parquet``: one row per input, de-duplicated by path,
renamed into place at the end. A file that cannot be read becomes a ``failed`` row with
the reason, never the end of the job.

Ray and pyarrow (``pip install 'qsegment[ray]'``) are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
import typing
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import QsegmentError, UsageError
from .files import atomic_write, write_json
from .images import ImageError, collect_inputs, read_rgb
from .inference.predict import Segmenter, output_folder, plan_outputs, write_outputs
from .pretrained import default_model
from .runtimes import DEFAULT_RUNTIME

if TYPE_CHECKING:
    import pyarrow as pa

    from .inference.predict import Prediction

MANIFEST = "manifest.parquet"
RECORDS = ".records"
SCHEMA_VERSION = 3  # of the manifest (Parquet metadata) and the records; raised on a change
INPUT_LIST_SUFFIXES = (".csv", ".parquet")
TASK_RETRIES = 3  # a batch whose worker dies is retried on a restarted worker this often
MAX_BLOCKS = 20_000  # Ray Data blocks: small enough to balance the tail, few enough to track
ROWS_PER_WRITE = 10_000  # manifest rows held by the driver before they go to the file
BIOMARKER_COLUMNS = ("bridge", "fov_source", "length_unit", "mm_per_pixel", "scale_source",
                     "reasons", "warnings", "disc_source")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ManifestError(QsegmentError, ValueError):
    """A manifest that this qsegment cannot read; the message names the file."""


@dataclass
class ManifestRow:
    """One input's row of ``manifest.parquet`` (and of its record): where it came from,
    how it went (``status`` ok or failed, with the reason in ``error``), the model, the
    map's size and vessel fraction, the threshold and scale with how each was found and
    any ``quality`` warnings, each output (the artery/vein map of an artery/vein model
    among them) with its SHA-256, the seconds each step
    took, the worker; ``biomarkers``: the measured columns (``qsegment batch
    --biomarkers``: the biomarkers, the optic disc and, from an artery/vein model, CRAE,
    CRVE, AVR and the per-class measures, and :data:`BIOMARKER_COLUMNS`), else empty."""

    path: str
    name: str
    status: str = "ok"
    error: str = ""
    model: str | None = None
    runtime: str | None = None
    threshold: float | None = None
    threshold_rule: str | None = None
    scale: float | None = None
    scale_rule: str | None = None
    fov_scale: float | None = None
    quality: str = ""  # comma-separated warnings (qsegment.inference.calibrate.QUALITY)
    height: int | None = None
    width: int | None = None
    vessel_fraction: float | None = None
    mask: str | None = None
    mask_sha256: str | None = None
    prob: str | None = None
    prob_sha256: str | None = None
    av: str | None = None  # the artery/vein map (--av)
    av_sha256: str | None = None
    read_s: float | None = None
    segment_s: float | None = None
    write_s: float | None = None
    measure_s: float | None = None
    worker: str | None = None
    biomarkers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, source: str, reason: str) -> ManifestRow:
        return cls(source, Path(source).stem, status="failed", error=reason)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestRow:
        """A row from its flat form (:meth:`to_dict`)."""
        own = {f.name for f in fields(cls)} - {"biomarkers"}
        return cls(**{k: v for k, v in data.items() if k in own},
                   biomarkers={k: v for k, v in data.items() if k not in own})

    def to_dict(self) -> dict[str, Any]:
        """The flat row: a column per field, the biomarkers' after them."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "biomarkers"}
        return {**row, **self.biomarkers}


@dataclass
class BatchSummary:
    """What :func:`segment_batch` did; ``manifest`` holds one row per input."""

    manifest: Path
    segmented: int = 0  # images segmented by this run
    skipped: int = 0  # complete from an earlier run (record and checksums match)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    workers: int = 0
    seconds: float = 0.0

    def count(self, row: ManifestRow, skipped: bool) -> None:
        if row.status != "ok":
            self.failed.append((row.path, row.error))
        elif skipped:
            self.skipped += 1
        else:
            self.segmented += 1


def is_uri(source: str) -> bool:
    """Whether ``source`` names a file by URI (``s3://``, ``gs://``, ``file://``...)."""
    return bool(_URI.match(source))


def read_input_list(path: Path) -> list[str]:
    """The image paths or URIs that a CSV or Parquet input list names: its ``path``
    column (or its only column); relative paths are relative to the list's folder.
    ``qsegment batch``'s own ``manifest.parquet`` is one.

    Args:
        path: a ``.parquet`` file, or a CSV file (any other suffix).

    Returns:
        The list's non-empty entries in its order: URIs as they are, local paths made
        absolute.

    Raises:
        UsageError: the file is no readable CSV or Parquet table, or it has several
            columns and none named ``path``.
        ModuleNotFoundError: pyarrow (``pip install 'qsegment[ray]'``) is not installed.
    """
    import pyarrow.csv
    import pyarrow.parquet

    try:
        table = (pyarrow.parquet.read_table(path) if path.suffix.lower() == ".parquet"
                 else pyarrow.csv.read_csv(path))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable CSV or Parquet list ({err})") from err
    names = table.column_names
    column = "path" if "path" in names else names[0] if len(names) == 1 else None
    if column is None:
        raise UsageError(f"{path}: a list of inputs needs a 'path' column (it has: "
                         f"{', '.join(names)})")
    values = [str(v) for v in table.column(column).to_pylist() if v not in (None, "")]
    return [v if is_uri(v) else str((path.parent / v).absolute()) for v in values]


def collect_sources(inputs: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Images from files, folders, glob patterns, URIs and input lists (``.csv`` /
    ``.parquet``, :func:`read_input_list`), local paths made absolute, each once; with
    (input, problem) for inputs that give none."""
    sources: list[str] = []
    failed: list[tuple[str, str]] = []
    for item in map(str, inputs):
        if is_uri(item):
            sources.append(item)
        elif item.lower().endswith(INPUT_LIST_SUFFIXES) and Path(item).is_file():
            sources += read_input_list(Path(item))
        else:
            files, problems = collect_inputs([item])
            sources += [str(f.absolute()) for f in files]
            failed += problems
    return list(dict.fromkeys(sources)), failed


def read_source(source: str) -> np.ndarray:
    """An image from a local path (:func:`~qsegment.images.read_rgb`) or from a URI that
    pyarrow's filesystems open (S3, GCS, HDFS, ``file://``), fetched to a temporary file."""
    if not is_uri(source):
        return read_rgb(source)
    from pyarrow import fs

    with tempfile.TemporaryDirectory(prefix="qsegment-batch-") as tmp:
        local = Path(tmp) / "image"
        try:
            filesystem, path = fs.FileSystem.from_uri(source)
            with filesystem.open_input_stream(path) as stream:
                local.write_bytes(stream.read())
        except (OSError, ValueError) as err:
            raise ImageError(f"{source}: cannot fetch it ({err})") from err
        try:
            return read_rgb(local)
        except ImageError as err:
            raise ImageError(f"{source}: {str(err).removeprefix(f'{local}: ')}") from err


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_record(path: str, row: ManifestRow, settings: dict) -> None:
    write_json(path, {"schema_version": SCHEMA_VERSION, **row.to_dict(), "settings": settings})


def complete_record(item: dict, settings: dict) -> ManifestRow | None:
    """The row recorded for an image segmented before with ``settings`` (by this schema
    version), if it succeeded and each output file still has its recorded SHA-256; else
    None (the image is redone)."""
    try:
        record = json.loads(Path(item["record"]).read_text())
        if (record.pop("schema_version", None) != SCHEMA_VERSION
                or record.pop("settings", None) != settings or record.get("status") != "ok"
                or record.get("path") != item["path"]):
            return None
        for kind in settings["kinds"]:
            if record.get(kind) != item[kind] or _sha256(item[kind]) != record[f"{kind}_sha256"]:
                return None
        return ManifestRow.from_dict(record)
    except (OSError, ValueError, KeyError, TypeError):  # none, torn, an output missing
        return None


def _plain(value: object) -> object:
    """A manifest cell: NaN as null, dicts and lists as JSON text."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return json.dumps(value) if isinstance(value, dict | list) else value


class SegmentWorker:
    """One Ray actor's state: a Segmenter loaded once, its interpreter on ``threads``
    threads (the actor's CPUs, so that workers sharing a machine do not oversubscribe
    it). Called on a batch of work items, it returns each image's row as JSON text and
    whether it was complete already."""

    def __init__(self, settings: dict, threads: int) -> None:
        self.settings = settings
        self.segmenter = Segmenter.from_pretrained(
            settings["model"], settings["threshold"], settings["runtime"], threads=threads,
            scale=settings["scale"], tile=settings["tile"],
            artery_vein=settings["artery_vein"])
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, skipped = [], []
        for i in range(len(batch["path"])):
            item = {key: str(values[i]) for key, values in batch.items()}
            row = complete_record(item, self.settings)
            skipped.append(row is not None)
            rows.append(row if row is not None else self.segment(item))
        return {"row": np.array([json.dumps(r.to_dict()) for r in rows], dtype=object),
                "skipped": np.array(skipped)}

    def segment(self, item: dict) -> ManifestRow:
        """Read, segment, write the PNGs, measure if asked; then the record."""
        row = ManifestRow(item["path"], item["name"], model=self.segmenter.name,
                          runtime=self.segmenter.runtime, worker=self.worker)
        clock = time.perf_counter()

        def lap(step: str) -> None:
            nonlocal clock
            setattr(row, f"{step}_s", time.perf_counter() - clock)
            clock = time.perf_counter()

        try:
            image = read_source(item["path"])
            lap("read")
            result = self.segmenter.predict(image, item["path"])
            lap("segment")
            targets = {kind: Path(item[kind]) for kind in self.settings["kinds"]}
            digests = write_outputs(targets, image, result)
            lap("write")
            row.status, row.threshold, row.scale = "ok", result.threshold, result.scale
            row.threshold_rule, row.scale_rule = result.threshold_rule, result.scale_rule
            row.fov_scale, row.quality = result.fov_scale, ",".join(result.quality)
            row.height, row.width = image.shape[:2]
            row.vessel_fraction = float(result.mask.mean())
            for kind, target in targets.items():
                setattr(row, kind, str(target))
                setattr(row, f"{kind}_sha256", digests[kind])
            if self.settings["biomarkers"] is not None:
                row.biomarkers = self.measure(item, image, result)
                lap("measure")
        except QsegmentError as err:  # unreadable or unmeasurable: this image only
            row.status, row.error = "failed", str(err)
        _write_record(item["record"], row, self.settings)  # after the outputs
        return row

    def measure(self, item: dict, image: np.ndarray, result: Prediction) -> dict[str, Any]:
        """The manifest's biomarker columns of one image's map."""
        from .biomarkers.equivalents import FIELD_NAMES as AV_FIELD_NAMES
        from .biomarkers.measures import FIELD_NAMES
        from .biomarkers.report import measure_prediction

        _, row = measure_prediction(Path(item["path"]), item["name"], image, result,
                                    self.segmenter, **self.settings["biomarkers"])
        cells = row.to_dict()
        return {key: _plain(cells[key])
                for key in (*FIELD_NAMES, *AV_FIELD_NAMES, *BIOMARKER_COLUMNS)}


def manifest_schema(biomarkers: bool) -> pa.Schema:
    """The Parquet manifest's columns, those of :class:`ManifestRow` (the biomarkers' only
    when measured), with ``schema_version`` in its metadata."""
    import pyarrow as pa

    text, number, integer = pa.string(), pa.float64(), pa.int64()
    arrow = {str: text, float: number, int: integer}
    hints = typing.get_type_hints(ManifestRow)  # X or X | None: the column holds X or null
    columns = [(f.name, arrow[next(t for t in typing.get_args(hints[f.name]) or
                                   (hints[f.name],) if t is not type(None))])
               for f in fields(ManifestRow) if f.name != "biomarkers"]
    if biomarkers:
        from .biomarkers.equivalents import FIELDS as AV_FIELDS
        from .biomarkers.measures import FIELDS

        columns += [(f.name, integer if f.unit == "count" else number)
                    for f in (*FIELDS, *AV_FIELDS)]
        columns += [(name, number if name in ("bridge", "mm_per_pixel") else text)
                    for name in BIOMARKER_COLUMNS]
    return pa.schema(columns, metadata={"schema_version": str(SCHEMA_VERSION)})


def read_batch_manifest(path: str | Path) -> list[ManifestRow]:
    """The rows of a ``manifest.parquet`` that ``qsegment batch`` wrote.

    Args:
        path: the manifest file.

    Returns:
        One row per input, in the file's order (failed inputs with ``status="failed"``).

    Raises:
        ManifestError: the file is no readable Parquet file, or was written without this
            schema version (by another version of qsegment, or by something else).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: not a readable Parquet file ({err})") from err
    version = (table.schema.metadata or {}).get(b"schema_version", b"none").decode()
    if version != str(SCHEMA_VERSION):
        raise ManifestError(f"{path}: manifest schema version {version}, this qsegment reads "
                            f"{SCHEMA_VERSION}")
    return [ManifestRow.from_dict(row) for row in table.to_pylist()]


def _write_manifest(path: Path, rows: Iterable[ManifestRow], schema: pa.Schema) -> None:
    """Rows into a Parquet file as they arrive, ``ROWS_PER_WRITE`` at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, schema) as writer:
        chunk: list[dict] = []
        for row in rows:
            chunk.append(row.to_dict())
            if len(chunk) == ROWS_PER_WRITE:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
        writer.write_table(pa.Table.from_pylist(chunk, schema=schema))


def _rows(items: list[dict], stream: Iterable[dict], summary: BatchSummary
          ) -> Iterator[ManifestRow]:
    """One row per work item: the first of each path (a retried batch can send an image
    twice, with the same outputs), and a failed row for any the job ended without."""
    expected = {item["path"] for item in items}
    for result in stream:
        row = ManifestRow.from_dict(json.loads(result["row"]))
        if row.path in expected:
            expected.discard(row.path)
            summary.count(row, bool(result["skipped"]))
            yield row
    for source in sorted(expected):
        row = ManifestRow.failed(source, "the job ended without a result for it; run it again")
        summary.count(row, False)
        yield row


def _work(sources: list[str], out: Path, kinds: list[str], failed: list[tuple[str, str]]
          ) -> list[dict]:
    """The work items: each source with its output files and its record."""
    paths = {Path(s): s for s in sources}
    return [{"path": paths[path], "name": path.stem,
             "record": str(out / RECORDS / f"{path.stem}.json"),
             **{kind: str(target) for kind, target in targets.items()}}
            for path, targets in plan_outputs(list(paths), out, kinds, failed)]


def _submit(items: list[dict], settings: dict, summary: BatchSummary, workers: int | None,
            cpus_per_worker: int, batch_size: int, progress: bool
            ) -> Iterable[dict[str, Any]]:
    """The rows of a Ray Data job over ``items``, streamed as the actors finish them."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = progress
    cpus = ray.cluster_resources().get("CPU", 1)
    summary.workers = workers or max(1, int(cpus // cpus_per_worker))
    blocks = min(MAX_BLOCKS, math.ceil(len(items) / batch_size))
    with warnings.catch_warnings():  # Ray 2.60 takes the retry limits only as remote args
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            SegmentWorker, batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=summary.workers),
            num_cpus=cpus_per_worker, max_restarts=-1, max_task_retries=TASK_RETRIES,
            fn_constructor_kwargs={"settings": settings, "threads": cpus_per_worker},
        ).iter_rows()


def _start_ray(address: str | None) -> bool:
    """Connect to ``address`` (a cluster), or start a local Ray; False where this process
    is connected already (a notebook, a test), which is then left as it is."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address or "local", include_dashboard=False,
             logging_level=logging.WARNING)
    return True


def segment_batch(inputs: Iterable[str], out: str | Path, *, model: str | Path | None = None,
                  runtime: str = DEFAULT_RUNTIME, threshold: str | float = "auto",
                  scale: str | float = "auto",
                  tile: int | tuple[int, int] | None = None, probability: bool = False,
                  artery_vein: bool = False, biomarkers: bool = False,
                  mm_per_pixel: float | None = None,
                  fov_degrees: float | None = None, min_object_px: int = 0,
                  bridge: float | None = 0.3, address: str | None = None,
                  workers: int | None = None,
                  cpus_per_worker: int = 1, batch_size: int = 4,
                  progress: bool = True) -> BatchSummary:
    """Segment every input (files, folders, glob patterns, URIs, CSV / Parquet manifests)
    into ``out`` on Ray, as ``qsegment predict`` would (the same PNGs, byte for byte),
    with ``workers`` actors of ``cpus_per_worker`` CPUs each (default: as many as the
    cluster's CPUs hold). ``address``: a Ray cluster (``auto``, ``ray://HOST:10001``);
    without it a local Ray is started and stopped, unless this process is connected
    already. Images complete from an earlier run are skipped; ``out/manifest.parquet``
    gets one row per input. ``biomarkers`` adds the vessel biomarkers of each map (its
    gaps bridged down to ``bridge``: :func:`qsegment.biomarkers.bridge_gaps`).

    Args:
        inputs: image files, folders, glob patterns, URIs and input lists
            (:func:`read_input_list`).
        out: the output folder (made if missing): ``NAME_mask.png`` (and
            ``NAME_prob.png``) per input, the records and ``manifest.parquet``.
        model: a shipped weights name, a run folder or a .safetensors file (default:
            :func:`qsegment.pretrained.default_model`'s, for ``artery_vein``).
        runtime: the runtime each worker runs the model on
            (:func:`qsegment.runtimes.checkpoint_runtimes`), or ``auto``: the fastest
            installed for this CPU (:func:`qsegment.runtimes.auto_runtimes`).
        threshold: ``auto`` (a cut per image), ``card`` or a probability
            (:meth:`~qsegment.inference.predict.Segmenter.from_pretrained`).
        scale: ``auto``, ``fov``, ``none`` or a factor: how images are resized before the
            network (:func:`~qsegment.inference.calibrate.calibrated_map`).
        tile: the largest image run whole, as N or (height, width); larger ones go in
            tiles (:class:`~qsegment.inference.predict.Segmenter`).
        probability: also write ``NAME_prob.png`` (probability x 255).
        artery_vein: also write ``NAME_av.png``, the artery/vein map of an artery/vein
            model (its path and SHA-256 in the manifest's ``av`` columns).
        biomarkers: measure each map's vessel biomarkers into the manifest.
        mm_per_pixel: the pixel size of the biomarkers (default: pixels).
        fov_degrees: the camera's field of view in degrees, from which the pixel size
            is computed instead (:func:`qsegment.biomarkers.pixel_size`).
        min_object_px: vessel fragments of this many pixels or fewer are not measured.
        bridge: the probability down to which a map's gaps are bridged before it is
            measured (None: measure the mask as cut).
        address: the Ray cluster to connect to (default: a local Ray).
        workers: Ray actors, each with one Segmenter (default: as many as the cluster's
            CPUs hold).
        cpus_per_worker: the CPUs (and interpreter threads) of each actor.
        batch_size: images per Ray Data batch.
        progress: show Ray Data's progress bars.

    Returns:
        What the run did: the manifest's path, images segmented, skipped (complete
        before) and failed (each with the reason), the workers and the seconds.

    Raises:
        UsageError: ``workers``, ``cpus_per_worker`` or ``batch_size`` under 1, a bad
            ``scale`` or ``tile``, or an input list that cannot be read.
        UnknownNameError: an unknown ``runtime``; the message lists them.
        CheckpointError: ``model`` is no weights name, run folder or checkpoint.
        ModelFileError: weights that cannot run on ``runtime``.
        ImageError: ``out`` is a file.
        ModuleNotFoundError: Ray or pyarrow (``pip install 'qsegment[ray]'``), or what
            ``biomarkers`` needs, is not installed.
    """
    started = time.perf_counter()
    if (workers is not None and workers < 1) or cpus_per_worker < 1 or batch_size < 1:
        raise UsageError("workers, cpus per worker and batch size must be at least 1")
    out = output_folder(out)
    model = default_model(artery_vein) if model is None else model
    Segmenter.from_pretrained(model, threshold, runtime, scale=scale, tile=tile,
                              artery_vein=artery_vein)  # checked here, not in every worker
    options = None
    if biomarkers:  # fail here, not in every worker, when the extra is missing
        from .biomarkers.report import measure_prediction  # noqa: F401

        options = {"mm_per_pixel": mm_per_pixel, "fov_degrees": fov_degrees,
                   "min_object_px": min_object_px, "bridge": bridge}
    kinds = ["mask", *(["prob"] if probability else []), *(["av"] if artery_vein else [])]
    settings = json.loads(json.dumps({
        "model": str(model), "runtime": runtime, "threshold": threshold, "scale": scale,
        "tile": tile, "kinds": kinds, "biomarkers": options,
        "artery_vein": artery_vein}))  # as a record reads back
    sources, failed = collect_sources(inputs)
    items = _work(sources, out, kinds, failed)
    summary = BatchSummary(out / MANIFEST)
    head = [ManifestRow.failed(source, reason) for source, reason in failed]
    for row in head:
        summary.count(row, False)
    ray_started = bool(items) and _start_ray(address)
    try:  # the job runs as the manifest is written: the driver never holds all the rows
        stream = _submit(items, settings, summary, workers, cpus_per_worker, batch_size,
                         progress) if items else []
        atomic_write(summary.manifest, lambda tmp: _write_manifest(
            tmp, itertools.chain(head, _rows(items, stream, summary)),
            manifest_schema(biomarkers)))
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary
