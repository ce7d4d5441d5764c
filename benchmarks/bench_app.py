"""What a faster network gives the web app: `qsegment app`'s upload-to-answer time per model.

For each model of ``--models`` a `qsegment app --model M` server runs on a free loopback
port (needs ``qsegment[app]``). Once each has warmed itself up (its process idle) and
answered ``--warmups`` uploads, a CHASE_DB1 photograph (``Image_11L.jpg``, 66 kB) is
POSTed to ``/api/segment`` in turns, one upload per server per round, for ``--repeats``
rounds: the time from sending the file to the answer, which is decoding,
``Segmenter.predict`` and writing the page's images (the browser then fetches the
overlay; ``tests/test_app.py`` times that part with Chromium).
In this process the two models' ``Segmenter.predict`` on the decoded photograph is timed
in turns too, so that with two models the app's speed-up stands beside the network
call's (issue #35: the app should gain what the CLI gains).

    python benchmarks/bench_app.py [--models A,B] [--repeats 15] [--json out.json]

The servers idle while the other answers; medians, so ratios come from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_runtimes import interleaved_timings

QSEGMENT = [sys.executable, "-m", "qsegment"]
IMAGE = "Image_11L.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, folder: Path) -> tuple[subprocess.Popen, str]:
    """A `qsegment app` for ``model`` and its URL, once its page answers."""
    port = free_port()
    log = (folder / f"{model.replace('/', '_')}.log").open("wb")
    process = subprocess.Popen([*QSEGMENT, "app", "--port", str(port), "--model", model],
                               stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}/"
    end = time.perf_counter() + 120
    while time.perf_counter() < end:
        if process.poll() is not None:
            raise RuntimeError(f"qsegment app --model {model} exited: see {log.name}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return process, url
        except OSError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"qsegment app --model {model}: no page within 120 s")


def wait_idle(pid: int, quiet_s: float = 1.0, timeout_s: float = 180) -> None:
    """Wait until process ``pid`` has used under 5 % of a core for ``quiet_s``: the app warms
    itself up (a segmentation and the biomarkers' first calls, seconds) once its page
    answers, and an upload timed during that would be timed against it. Linux (/proc)."""
    def cpu_s() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end:
        before = cpu_s()
        time.sleep(quiet_s)
        if cpu_s() - before < 0.05 * quiet_s:
            return
    raise RuntimeError(f"process {pid} still busy after {timeout_s} s")


def upload(url: str, data: bytes) -> None:
    """POST ``data`` to the server's ``/api/segment`` and read the whole answer."""
    request = urllib.request.Request(f"{url}api/segment?name={IMAGE}", data=data,
                                     method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")


def main() -> None:
    from qsegment import Segmenter
    from qsegment.datasets import default_data_dir
    from qsegment.images import read_rgb
    from qsegment.pretrained import DEFAULT_MODEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODEL,
                        help=f"comma-separated; with two, the first's speed-up over the "
                        f"second ({DEFAULT_MODEL})")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (15)")
    parser.add_argument("--warmups", type=int, default=3, help="untimed rounds first (3)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    models = args.models.split(",")
    photograph = default_data_dir() / IMAGE
    data = photograph.read_bytes()
    with tempfile.TemporaryDirectory(prefix="qsegment-bench-app-") as tmp:
        servers = {m: start_server(m, Path(tmp)) for m in models}
        try:
            for process, _ in servers.values():
                wait_idle(process.pid)
            app = {m: t["ms"] for m, t in interleaved_timings(
                {m: (lambda url=url: upload(url, data)) for m, (_, url) in servers.items()},
                args.repeats, args.warmups).items()}
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    rgb = read_rgb(photograph)
    segmenters = {m: Segmenter.from_pretrained(m) for m in models}
    predict = {m: t["ms"] for m, t in interleaved_timings(
        {m: (lambda s=s: s.predict(rgb)) for m, s in segmenters.items()},
        args.repeats, args.warmups).items()}
    print(f"{IMAGE}, {args.repeats} rounds in turns after {args.warmups}, "
          f"{os.cpu_count()} CPUs")
    print("| model | app: upload to answer, ms | Segmenter.predict, ms |\n|---|---:|---:|")
    for m in models:
        print(f"| {m} | {app[m]:.1f} | {predict[m]:.1f} |")
    if len(models) == 2:
        new, old = models
        print(f"{new} over {old}: the app {app[old] / app[new]:.2f}x faster, "
              f"Segmenter.predict {predict[old] / predict[new]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"models": models, "app_ms": app,
                                               "predict_ms": predict}, indent=2) + "\n")


if __name__ == "__main__":
    main()
