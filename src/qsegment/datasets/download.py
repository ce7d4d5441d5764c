"""Getting CHASE_DB1 outside this repository: download, check, extract.

The archive comes from the dataset's publisher (Kingston University's research data
repository, CC BY 4.0). Every file the project uses is checked against the SHA-256 list
shipped with the package (``CHASEDB1.sha256``, the one beside the shared copy), so a
changed or damaged archive is refused, naming the file. The download resumes where a
broken one stopped (HTTP ``Range``) and retries; the folder is extracted beside its
destination and renamed into place, so it is either complete or absent.
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
from ..files import atomic_folder, user_cache_dir

log = logging.getLogger(__name__)

CHASEDB1_URL = "https://researchdata.kingston.ac.uk/96/1/CHASEDB1.zip"
CHECKSUMS = Path(__file__).with_name("CHASEDB1.sha256")
CHUNK = 1 << 20


class DownloadError(QsegmentError, RuntimeError):
    """The dataset could not be fetched or did not check out; says why and what to do."""


def default_download_dir() -> Path:
    """Where `qsegment data download` puts CHASE_DB1 without ``--to`` (and where the
    commands look for it): ``data/CHASEDB1`` in the user cache
    (:func:`~qsegment.files.user_cache_dir`)."""
    return user_cache_dir("data", "CHASEDB1")


def checksums() -> dict[str, str]:
    """File name -> SHA-256 of every CHASE_DB1 file."""
    pairs = (line.split() for line in CHECKSUMS.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in pairs}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds every CHASE_DB1 file with its checksum."""
    return folder.is_dir() and all(
        (folder / name).is_file() and _sha256(folder / name) == digest
        for name, digest in checksums().items())


def _fetch(url: str, part: Path, timeout: float, progress: Callable[[int, int], None] | None
           ) -> None:
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
              progress: Callable[[int, int], None] | None) -> None:
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
            for name, digest in expected.items():
                if name not in members:
                    raise DownloadError(f"{archive.name}: {name} is missing from the archive")
                target = staging / name
                with zf.open(members[name]) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                if _sha256(target) != digest:
                    raise DownloadError(f"{name}: checksum differs from CHASEDB1.sha256 (a "
                                        "changed or damaged archive); nothing was installed")
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive}: not a zip archive ({err}); delete it and retry") from err


def download_chasedb1(to: str | Path | None = None, url: str = CHASEDB1_URL, retries: int = 3,
                      timeout: float = 60.0,
                      progress: Callable[[int, int], None] | None = None) -> Path:
    """CHASE_DB1 in the flat layout at ``to`` (default :func:`default_download_dir`);
    returns the folder. A complete folder there is kept as it is; the archive's partial
    download is kept beside it (``.CHASEDB1.zip.part``) so that a new call resumes."""
    dest = Path(to) if to is not None else default_download_dir()
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
