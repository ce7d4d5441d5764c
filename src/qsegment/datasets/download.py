"""Getting a dataset outside this repository: download, check, extract.

Every registered dataset that `qsegment data` serves ships the SHA-256 list of its files
beside this module (``CHASEDB1.sha256``, ``HRF-AV.sha256``, ``LES-AV.sha256``: the ones
beside the shared copies, paths relative to the dataset's folder), so a changed or
damaged file is refused, naming it; :func:`check_dataset` checks a folder against it.

CHASE_DB1 comes from its publisher (Kingston University's research data repository,
CC BY 4.0): the download resumes where a broken one stopped (HTTP ``Range``) and
retries; the folder is extracted beside its destination and renamed into place, so it
is either complete or absent. HRF-AV and LES-AV have no direct download in the layout
qsegment reads: :func:`download_dataset` says where to get their files and how to
arrange them.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..errors import QsegmentError
from ..files import atomic_folder
from . import DATASETS
from .arteryvein import ArteryVeinFolder
from .base import DatasetError, data_cache_folder, data_env_var, is_ancillary
from .chasedb1 import ChaseDB1

log = logging.getLogger(__name__)

CHASEDB1_URL = "https://researchdata.kingston.ac.uk/96/1/CHASEDB1.zip"
SERVED = ("chasedb1", "hrf-av", "les-av")  # the datasets with a SHA-256 list shipped here
CHUNK = 1 << 20

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class DownloadError(QsegmentError, RuntimeError):
    """The dataset could not be fetched or did not check out; says why and what to do."""


def checksum_list(folder: str) -> Path:
    """The SHA-256 list shipped for the dataset whose folder is named ``folder``."""
    return Path(__file__).with_name(f"{folder}.sha256")


def checksums(folder: str = "CHASEDB1") -> dict[str, str]:
    """Path (relative to the dataset's folder) -> SHA-256 of every file of a dataset."""
    text = checksum_list(folder).read_text()
    pairs = (line.split(maxsplit=1) for line in text.splitlines() if line.strip())
    return {name: digest for digest, name in pairs}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def first_mismatch(root: Path, expected: dict[str, str], progress: Progress | None = None
                   ) -> tuple[str, str] | None:
    """(path, what is wrong) of the first file of ``expected`` that is missing under
    ``root`` or whose SHA-256 differs, else None. Every file's presence is checked before
    any is read, so a missing one is named at once."""
    for name in expected:
        if not (root / name).is_file():
            return name, "missing"
    total = sum((root / name).stat().st_size for name in expected)
    done = 0
    for name, digest in expected.items():
        if _sha256(root / name) != digest:
            return name, "checksum differs"
        done += (root / name).stat().st_size
        if progress is not None:
            progress(done, total)
    return None


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds every CHASE_DB1 file with its checksum."""
    return folder.is_dir() and first_mismatch(folder, checksums()) is None


def _served(name: str) -> type[ChaseDB1] | type[ArteryVeinFolder]:
    """The dataset class of ``name``, one that `qsegment data` serves."""
    if name not in SERVED:
        raise DownloadError(f"`qsegment data` serves {', '.join(SERVED)}, not {name}")
    return DATASETS.load(name)


def check_dataset(name: str, root: str | Path | None = None,
                  progress: Progress | None = None) -> tuple[Path, int]:
    """(folder, number of files) of dataset ``name`` (default folder: where the commands
    find it) once every file matches its shipped SHA-256 list; else a DatasetError naming
    the first file that is missing, differs, or is not on the list."""
    dataset = _served(name)
    folder = Path(root) if root is not None else dataset.default_root()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a directory (expected the {dataset.title} folder)")
    listing = checksum_list(dataset.folder)
    expected = checksums(dataset.folder)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative not in expected and not is_ancillary(path.name):
            raise DatasetError(f"{path}: not in {listing.name}, so not a file of "
                               f"{dataset.title}; move it out of the folder")
    if bad := first_mismatch(folder, expected, progress):
        file, problem = bad
        raise DatasetError(f"{folder / file}: {problem}; {listing} lists every file of the "
                           f"published {dataset.title} with its SHA-256")
    return folder, len(expected)


def where_to_get(dataset: type[ArteryVeinFolder], to: str | Path | None = None) -> str:
    """What to do to get ``dataset``, which no publisher offers in qsegment's layout: its
    sources, the layout, where to put it and how to check it."""
    name = dataset.name
    folder = Path(to) if to is not None else data_cache_folder(dataset.folder)
    return (f"qsegment cannot download {dataset.title}: no publisher offers it in the "
            f"layout qsegment reads.\n"
            f"  Get {dataset.source}.\n"
            f"  Arrange the files as {dataset.layout()}; {checksum_list(dataset.folder)} "
            f"lists every path.\n"
            f"  Put the folder at {folder}{'' if to else ' (where the commands look for it)'}"
            f", or anywhere with {data_env_var(name)}=DIR or --data DIR, then check every "
            f"file:\n"
            f"    qsegment data check {name} --data {folder}")


def download_dataset(name: str, to: str | Path | None = None, url: str | None = None,
                     progress: Progress | None = None) -> Path:
    """Dataset ``name`` downloaded and checked into ``to`` (default: where the commands
    look for it); a DownloadError saying where to get it for a set no publisher offers in
    qsegment's layout (every one but CHASE_DB1)."""
    dataset = _served(name)
    if issubclass(dataset, ArteryVeinFolder):
        raise DownloadError(where_to_get(dataset, to))
    return download_chasedb1(to, url=url or CHASEDB1_URL, progress=progress)


def _fetch(url: str, part: Path, timeout: float, progress: Progress | None) -> None:
    """Download ``url`` into ``part``, continuing after the bytes already there."""
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if done and response.status != 206:  # the server ignored the range: start over
            done = 0
        total = done + int(response.headers.get("Content-Length") or 0)
        with part.open("ab" if done else "wb") as f:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    if done < total:  # the server closed early: what arrived stays for the next try
        raise ConnectionError(f"connection closed after {done} of {total} bytes")


def _download(url: str, part: Path, retries: int, timeout: float,
              progress: Progress | None) -> None:
    for attempt in range(1, retries + 1):
        try:
            _fetch(url, part, timeout, progress)
            return
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
                ConnectionError) as err:  # no network, a cut connection: resume
            if attempt == retries:
                reason = getattr(err, "reason", err)
                raise DownloadError(
                    f"cannot download {url} ({reason}) after {retries} tries: check the "
                    "network, or download the archive by hand and unpack it into the "
                    "folder given to --to") from err
            log.warning("download interrupted (%s); retrying (%d of %d)",
                        getattr(err, "reason", err), attempt + 1, retries)
            time.sleep(min(2 ** attempt, 10) * 0.1)


def _extract(archive: Path, staging: Path) -> None:
    """The checked CHASE_DB1 files of ``archive`` into ``staging`` (flat), or an error
    naming the first file that is missing or differs."""
    expected = checksums()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m).name: m for m in zf.namelist() if Path(m).name in expected}
            for name in expected:
                if name not in members:
                    raise DownloadError(f"{archive.name}: {name} is missing from the archive")
                with zf.open(members[name]) as src, (staging / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive}: not a zip archive ({err}); delete it and retry") from err
    if bad := first_mismatch(staging, expected):
        raise DownloadError(f"{bad[0]}: {bad[1]} (CHASEDB1.sha256: a changed or damaged "
                            "archive); nothing was installed")


def download_chasedb1(to: str | Path | None = None, url: str = CHASEDB1_URL, retries: int = 3,
                      timeout: float = 60.0, progress: Progress | None = None) -> Path:
    """CHASE_DB1 in the flat layout at ``to`` (default: ``CHASEDB1`` in
    :func:`~qsegment.datasets.base.data_cache_folder`, where the commands look for it);
    returns the folder. A complete folder there is kept as it is; the archive's partial
    download is kept beside it (``.CHASEDB1.zip.part``) so that a new call resumes."""
    dest = Path(to) if to is not None else data_cache_folder("CHASEDB1")
    if is_complete(dest):
        log.info("%s: CHASE_DB1 is already there, every checksum matches", dest)
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise DownloadError(f"{dest}: exists and is not a complete CHASE_DB1 folder; choose "
                            "an empty or new --to")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.zip.part")
    try:
        with atomic_folder(dest) as staging:  # replaces dest, empty as checked above
            _download(url, part, retries, timeout, progress)
            try:
                _extract(part, staging)
            except DownloadError:
                part.unlink(missing_ok=True)  # a bad archive is not resumed
                raise
    except OSError as err:  # disk full, no permission
        raise DownloadError(f"{dest}: cannot write the dataset ({err})") from err
    part.unlink()
    return dest
