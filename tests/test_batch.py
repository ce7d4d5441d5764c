"""`qsegment batch` on a local Ray with 2 CPUs: the same PNGs as `qsegment predict`,
failed rows for bad files, and nothing lost or done twice when a worker is killed or
the command is interrupted and rerun."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qsegment import Segmenter
from qsegment.batch import (
    RECORDS,
    SCHEMA_VERSION,
    ManifestError,
    ManifestRow,
    collect_sources,
    complete_record,
    read_batch_manifest,
    segment_batch,
)
from qsegment.cli import main
from qsegment.errors import UsageError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def ray_local():
    """One quiet local Ray for the module: 2 CPUs, a small object store, no dashboard."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20,
             log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def chase(data_dir) -> list[Path]:
    return sorted(data_dir.glob("Image_*.jpg"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> Path:
    """`qsegment predict` on the 28 CHASE_DB1 photographs (masks and probabilities)."""
    out = tmp_path_factory.mktemp("predict")
    assert main(["predict", str(data_dir / "Image_*.jpg"), "-o", str(out), "--prob"]) == 0
    return out


def _manifest(out: Path) -> list[dict]:
    """The manifest's rows by name (they are written in the order the images finish), as
    the Parquet file holds them, checked against what its reader makes of them."""
    table = pq.read_table(out / "manifest.parquet")
    assert table.schema.metadata[b"schema_version"] == b"3"
    rows = table.to_pylist()
    assert [r.to_dict() for r in read_batch_manifest(out / "manifest.parquet")] == rows
    return sorted(rows, key=lambda r: r["name"])


def _same_pngs(out: Path, reference: Path, names: list[str], kinds=("mask",)) -> None:
    for name in names:
        for kind in kinds:
            png = f"{name}_{kind}.png"
            assert (out / png).read_bytes() == (reference / png).read_bytes(), png


def _links(folder: Path, photos: list[Path]) -> Path:
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    return folder


def test_masks_equal_predicts_and_a_rerun_skips_them(ray_local, reference, chase, tmp_path,
                                                     capsys):
    out = tmp_path / "out"
    command = ["batch", str(chase[0].parent / "Image_*.jpg"), "-o", str(out), "--workers", "2",
               "--prob"]
    assert main(command) == 0
    names = [p.stem for p in chase]
    _same_pngs(out, reference, names, kinds=("mask", "prob"))
    default = Segmenter.from_pretrained()
    rows = _manifest(out)
    assert [r["name"] for r in rows] == names and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        mask = np.asarray(Image.open(row["mask"])) > 0
        assert row["path"] == str(chase[names.index(row["name"])])
        assert row["vessel_fraction"] == pytest.approx(mask.mean())
        assert (row["height"], row["width"], row["scale"]) == (960, 999, 1.0)
        assert (row["model"], row["runtime"]) == (default.name, default.runtime)
        assert row["segment_s"] > 0 and row["error"] == ""
    assert "28 image(s) segmented" in capsys.readouterr().out

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert main(command) == 0  # the same command again: everything is complete
    assert "0 image(s) segmented" in (text := capsys.readouterr().out)
    assert "28 complete already, 0 failed" in text
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps
    assert _manifest(out) == rows


def test_a_bad_file_is_a_failed_row_and_the_rest_are_done(ray_local, reference, chase,
                                                          tmp_path, capsys):
    folder = _links(tmp_path / "in", chase[:2])
    (folder / "truncated.jpg").write_bytes(chase[2].read_bytes()[:5000])
    (folder / "notes.png").write_text("not an image")
    listed = tmp_path / "more.csv"  # relative to the list; one missing, one twice
    listed.write_text(f"path,label\nin/{chase[0].name},a\nmissing.jpg,b\n")
    parquet = tmp_path / "uris.parquet"
    pq.write_table(pa.table({"path": [chase[3].as_uri()]}), parquet)

    out = tmp_path / "out"
    assert main(["batch", str(folder), str(listed), str(parquet), "-o", str(out),
                 "--workers", "2", "--biomarkers"]) == 1
    err = capsys.readouterr().err
    for bad in ("in/truncated.jpg", "in/notes.png", "missing.jpg"):
        assert f"qsegment batch: {tmp_path / bad}: " in err
    rows = {r["name"]: r for r in _manifest(out)}
    assert len(rows) == 6
    for bad in ("truncated", "notes", "missing"):
        assert rows[bad]["status"] == "failed" and bad in rows[bad]["error"]
        assert not (out / f"{bad}_mask.png").exists()
    good = [p.stem for p in chase[:2]] + [chase[3].stem]
    assert all(rows[name]["status"] == "ok" for name in good)
    assert rows[chase[3].stem]["path"] == chase[3].as_uri()
    _same_pngs(out, reference, good)
    from qsegment import Segmenter
    from qsegment.biomarkers import BRIDGE_LOW, measure_photograph
    from qsegment.images import read_rgb

    rgb = read_rgb(chase[0])
    prediction = Segmenter.from_pretrained().predict(rgb)  # predict --biomarkers' measure
    expected = measure_photograph(rgb, prediction.mask, probability=prediction.probability).values
    row = rows[chase[0].stem]
    for field in ("area_density", "fractal_dimension", "tortuosity", "segments", "end_points"):
        assert row[field] == pytest.approx(expected[field]), field
    assert isinstance(row["segments"], int) and row["length_unit"] == "px"
    assert row["bridge"] == BRIDGE_LOW
    assert row["disc_diameter"] > 50 and row["disc_source"] == "located"  # the optic disc
    assert row["crae"] is None  # a vessel-only model: no artery/vein measures


def test_inputs_from_lists_folders_and_uris(tmp_path, chase):
    (tmp_path / "sub").mkdir()
    csv = tmp_path / "sub" / "list.csv"
    csv.write_text(f"path\n../a.jpg\n{chase[0]}\n\ns3://bucket/b.jpg\n")
    sources, failed = collect_sources([str(csv), str(chase[0]), "gs://x/c.png",
                                       str(tmp_path / "nothing")])
    assert sources == [str(tmp_path / "sub" / ".." / "a.jpg"), str(chase[0]),
                       "s3://bucket/b.jpg", "gs://x/c.png"]
    assert failed == [(str(tmp_path / "nothing"), "no such file or folder")]
    (tmp_path / "two.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UsageError, match="needs a 'path' column"):
        collect_sources([str(tmp_path / "two.csv")])


def test_a_manifest_or_record_of_another_schema_is_not_taken(tmp_path):
    """A Parquet file without the manifest's schema version is refused by its reader, and
    a record without it (an older qsegment's) is not a complete image: it is redone."""
    other = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"path": ["a.jpg"]}), other)
    with pytest.raises(ManifestError, match=r"manifest.parquet: manifest schema version none"):
        read_batch_manifest(other)
    mask = tmp_path / "a_mask.png"
    mask.write_bytes(b"a mask")
    row = ManifestRow("a.jpg", "a", mask=str(mask), mask_sha256=hashlib.sha256(b"a mask")
                      .hexdigest())
    settings = {"kinds": ["mask"]}
    item = {"path": "a.jpg", "record": str(tmp_path / "a.json"), "mask": str(mask)}
    (tmp_path / "a.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, **row.to_dict(),
                                                 "settings": settings}))
    assert complete_record(item, settings) == row
    (tmp_path / "a.json").write_text(json.dumps({**row.to_dict(), "settings": settings}))
    assert complete_record(item, settings) is None


def test_workers_choose_the_interpreter_threads():
    assert Segmenter.from_pretrained(threads=1).runner.threads == 1
    assert Segmenter.from_pretrained().runner.threads == os.cpu_count()  # as before


def test_usage_errors_and_the_missing_extra(tmp_path, chase, monkeypatch, capsys):
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as refused:
        main(["batch", str(chase[0]), "-o", out, "--workers", "0"])
    assert refused.value.code == 2
    assert "argument --workers: expected a whole number >= 1" in capsys.readouterr().err
    with pytest.raises(UsageError, match="must be at least 1"):
        segment_batch([str(chase[0])], out, workers=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if qsegment[ray] were not installed
    assert main(["batch", str(chase[0]), "-o", out]) == 2
    assert "pip install 'qsegment[ray]'" in capsys.readouterr().err


def _complete(out: Path, settings_from: Path) -> set[str]:
    """The images whose record and outputs are complete now."""
    settings = json.loads(settings_from.read_text())["settings"]
    done = set()
    for record in (out / RECORDS).glob("*.json"):
        item = json.loads(record.read_text())
        item = {"path": item["path"], "record": str(record), "mask": item.get("mask")}
        if complete_record(item, settings) is not None:
            done.add(record.stem)
    return done


def _default_ctrl_c() -> None:
    """The child answers Ctrl-C as from a terminal: an earlier test in the suite leaves
    SIGINT ignored in this process, and a child inherits an ignored signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_a_rerun_after_an_interruption_does_every_image_once(ray_local, reference, chase,
                                                              tmp_path):
    folder = _links(tmp_path / "in", chase[:12])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "qsegment", "batch", str(folder), "-o", str(out),
               "--workers", "2"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=_default_ctrl_c)
    deadline = time.monotonic() + 120
    while len(list((out / RECORDS).glob("*.json"))) < 3 and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert run.poll() is None, "the job ended before it could be interrupted"
    run.send_signal(signal.SIGINT)  # Ctrl-C mid-job
    assert run.wait(timeout=60) == 130
    assert not (out / "manifest.parquet").exists()
    records = sorted((out / RECORDS).glob("*.json"))
    done = _complete(out, records[0])
    assert 3 <= len(done) < 12
    tampered = sorted(done)[0]  # an output changed since its record: redone
    (out / f"{tampered}_mask.png").write_bytes(b"not the mask")
    stamps = {name: (out / f"{name}_mask.png").stat().st_mtime_ns for name in done}

    summary = segment_batch([str(folder)], out, workers=2, progress=False)
    assert summary.skipped == len(done) - 1 and summary.segmented == 12 - summary.skipped
    assert not summary.failed
    rows = _manifest(out)
    assert [r["name"] for r in rows] == [p.stem for p in chase[:12]]  # each image once
    _same_pngs(out, reference, [p.stem for p in chase[:12]])
    for name in done - {tampered}:  # complete images were not written again
        assert (out / f"{name}_mask.png").stat().st_mtime_ns == stamps[name]


@pytest.mark.slow
def test_a_killed_worker_loses_and_duplicates_nothing(ray_local, reference, chase, tmp_path):
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_the_first_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if records := list((out / RECORDS).glob("*.json")):
                worker = json.loads(records[0].read_text())["worker"]
                killed.append(int(worker.rpartition(":")[2]))
                os.kill(killed[0], signal.SIGKILL)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_the_first_worker)
    watcher.start()
    photos = chase[:16]
    summary = segment_batch([str(p) for p in photos], out, workers=2, batch_size=2,
                            progress=False)
    watcher.join()
    assert killed, "no worker was killed"
    assert summary.segmented + summary.skipped == 16 and not summary.failed
    rows = _manifest(out)
    names = [p.stem for p in photos]
    assert [r["name"] for r in rows] == names  # each image once
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{n}_mask.png" for n in names)
    _same_pngs(out, reference, names)
    workers = {r["worker"].rpartition(":")[2] for r in rows}
    assert str(killed[0]) in workers and len(workers) >= 3  # the killed one, its successor


@pytest.mark.slow
def test_address_joins_a_running_cluster_and_leaves_it_up(ray_local, reference, chase,
                                                          tmp_path):
    out = tmp_path / "out"
    address = ray_local.get_runtime_context().gcs_address
    done = subprocess.run([sys.executable, "-m", "qsegment", "batch", str(chase[0]),
                           str(chase[1]), "-o", str(out), "--address", address],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 image(s) segmented" in done.stdout and "by 2 worker(s)" in done.stdout
    _same_pngs(out, reference, [p.stem for p in chase[:2]])
    assert ray_local.is_initialized() and ray_local.cluster_resources()["CPU"] == 2
