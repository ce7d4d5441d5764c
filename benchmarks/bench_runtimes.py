"""Where the time of a CHASE_DB1 image goes, per runtime and per stage of qsegment predict.

The int8 network against this machine's measured int8 peak, and what surrounds it:

1. The machine's int8 peak, measured: OpenVINO running a chain of compute-bound int8
   convolutions (u8 activations x int8 weights, 128 -> 128 channels, 3x3, at 128x128),
   in GMAC/s; the kernel OpenVINO ran them with, and the CPU's 8-bit dot-product flags.
2. Per runtime, the bare int8 forward (the runtime's own call on an input already
   prepared) on one CHASE image: whole (padded to the shape the runtime runs it at), in
   the tiles the Segmenter cuts it into where it does, and at 256x256 (activations that
   fit in the caches); its GMAC/s (``count_macs`` of the network at each shape actually
   run) and % of the peak. Then the whole ``Segmenter.predict`` on the 8-bit image (scale,
   FOV, network, sigmoid, cut) over that bare forward: the issue's target is <= 1.15x.
   Also ``Segmenter.from_pretrained()`` (runtime auto) and the runtime it took, timed in
   turns with the same call without #31's label-free scale and cut and with the bare
   forward: what the calibration costs beside the rest.
3. ``predict_files`` (what ``qsegment predict`` runs) on a few CHASE images, its time split
   into stages by timers wrapped around the functions it calls (each stage's own time,
   without the stages it calls), per image and as a share of the per-image wall time.

    python benchmarks/bench_runtimes.py [--repeats 15] [--images 6] [--json out.json]

Each part runs in its own process, one after the other (a runtime's thread pools keep
spinning after it returns and slow the next one down), on ``--threads`` threads; every time
is the median of ``--repeats`` runs after ``--warmups``, so ratios come from one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

IMAGE = "Image_11L"  # the CHASE_DB1 image of part 2 (bench_predict.py's)
PEAK_CHANNELS, PEAK_SIZE, PEAK_DEPTH = 128, 128, 4
WHOLE_TILE = 1024  # a Segmenter tile that holds a CHASE image: one pass
BOUND_RATIO = 1.25  # GMAC/s at the small size over the whole image beyond which memory bounds it


def timings(call: Callable[[], Any], repeats: int, warmups: int) -> dict[str, float]:
    """Median milliseconds of ``call`` over ``repeats`` runs after ``warmups``, the fastest,
    and their spread ((slowest - fastest) / median): how far a ratio can be from noise."""
    return interleaved_timings({"": call}, repeats, warmups)[""]


def interleaved_timings(calls: dict[str, Callable[[], Any]], repeats: int, warmups: int
                        ) -> dict[str, dict[str, float]]:
    """:func:`timings` of several calls run in turns (one of each per round), so that the
    machine's drifts fall on all of them alike and their ratios hold."""
    for _ in range(warmups):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: {"ms": statistics.median(t), "fastest_ms": min(t),
                   "spread": (max(t) - min(t)) / statistics.median(t)}
            for name, t in times.items()}


def int8_dot_product_flags() -> list[str]:
    """This CPU's 8-bit dot-product instruction sets (VNNI, AMX) as Linux lists them."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(words & {"avx512_vnni", "avx_vnni", "amx_int8"})


def peak_worker(args: argparse.Namespace) -> dict:
    """GMAC/s of a chain of int8 3x3 convolutions in OpenVINO, and the precision and kernel
    it ran them with (the compiled model's runtime graph)."""
    import openvino as ov
    import openvino.opset13 as ops

    c, s = PEAK_CHANNELS, PEAK_SIZE
    rng = np.random.default_rng(0)
    x = ops.parameter([1, c, s, s], ov.Type.f32, name="x")
    low, high = ops.constant(np.float32(0)), ops.constant(np.float32(1))
    y = x
    for _ in range(PEAK_DEPTH):  # u8 activations (FakeQuantize) x int8 weights, dequantized
        activations = ops.fake_quantize(y, low, high, low, high, 256)
        weights = ops.constant(rng.integers(-127, 128, (c, c, 3, 3), dtype=np.int8))
        scale = ops.constant(np.full((c, 1, 1, 1), 1e-3, np.float32))
        dequantized = ops.multiply(ops.convert(weights, ov.Type.f32), scale)
        y = ops.convolution(activations, dequantized, [1, 1], [1, 1], [1, 1], [1, 1])
    network = ov.Model([ops.fake_quantize(y, low, high, low, high, 256)], [x])
    compiled = ov.Core().compile_model(network, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                        "INFERENCE_NUM_THREADS": args.threads})
    convolutions = {
        (info["runtimePrecision"].astype(str), info["primitiveType"].astype(str))
        for info in (op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops())
        if info["layerType"].astype(str) == "Convolution"}
    request = compiled.create_infer_request()
    data = rng.random((1, c, s, s), dtype=np.float32)
    timed = timings(lambda: request.infer({0: data}, share_inputs=True), args.repeats,
                    args.warmups)
    macs = PEAK_DEPTH * c * c * 9 * s * s
    return {**timed, "macs": macs, "gmac_s": macs / timed["ms"] / 1e6,
            "convolution_kernels": sorted(f"{p} {k}" for p, k in convolutions),
            "int8_dot_product_flags": int8_dot_product_flags(),
            "openvino": ov.get_version()}


def bare_forward(runtime: Any, rgb: np.ndarray, small_session: Any = None
                 ) -> tuple[Callable[[], Any], list[int]]:
    """The runtime's own forward call on ``rgb`` (H, W, 3) uint8, its input prepared once,
    and the (height, width) it runs at. ``small_session``: a tflite-int8 interpreter for
    exactly this shape (the shipped ones would pad it)."""
    from qsegment.images import network_input, to_rgb_float
    from qsegment.runtimes.litert import quantize_input

    x, _ = network_input(to_rgb_float(rgb), None, runtime.size_multiple)
    if runtime.name == "openvino":
        request = runtime.request(x.shape)
        return lambda: request.infer({0: x}, share_inputs=True), list(x.shape[2:])
    if runtime.name == "onnx-int8":
        feed = {runtime.input_name: x}
        return lambda: runtime.session.run(None, feed), list(x.shape[2:])
    session = small_session or runtime.session(*runtime.shape_for(*x.shape[2:]))
    height, width = session.shape[1:3]
    q = quantize_input(np.pad(x, ((0, 0), (0, 0), (0, height - x.shape[2]),
                                  (0, width - x.shape[3]))), *session.input_quantization)
    return lambda: session.run(q), [height, width]


def tile_crops(segmenter: Any, rgb: np.ndarray) -> list[np.ndarray]:
    """The crops of ``rgb`` that ``segmenter`` runs the network on (one: the whole image,
    where it fits its tile), as ``Segmenter._tiled`` cuts them."""
    rows, columns = segmenter.windows(*rgb.shape[:2])
    return [rgb[y0:y1, x0:x1] for y0, y1, _, _ in rows for x0, x1, _, _ in columns]


def timed_forwards(forwards: list[tuple[Callable[[], Any], list[int]]], args: argparse.Namespace
                   ) -> dict:
    """Median ms of running all ``forwards`` one after the other, with their shapes."""
    return {**timings(lambda: [forward() for forward, _ in forwards], args.repeats, args.warmups),
            "shapes": [shape for _, shape in forwards]}


def small_tflite_session(args: argparse.Namespace, weights: Path) -> Any:
    """A tflite-int8 interpreter at exactly ``--small`` (built once from the weights and
    cached by export: no such file ships)."""
    from qsegment.export.cpu import litert_int8

    builder = litert_int8(weights)
    builder.threads = args.threads
    return builder.session(args.small, args.small)


def runtime_worker(args: argparse.Namespace) -> dict:
    """Part 2 for the runtime ``args.worker``: bare forwards, whole and in the Segmenter's
    tiles and at ``--small``, and ``Segmenter.predict`` in its default tiling and whole."""
    from qsegment import Segmenter
    from qsegment.datasets import load_sample
    from qsegment.pretrained import resolve_checkpoint

    name = args.worker
    rgb = np.round(load_sample(None, IMAGE).image * 255).astype(np.uint8)  # a decoded file
    segmenter = Segmenter.from_pretrained(args.model, runtime=name, threads=args.threads)
    runtime = segmenter.runner
    top, left = (rgb.shape[0] - args.small) // 2, (rgb.shape[1] - args.small) // 2
    small = rgb[top:top + args.small, left:left + args.small]
    small_session = (small_tflite_session(args, resolve_checkpoint(args.model))
                     if name == "tflite-int8" else None)
    crops = tile_crops(segmenter, rgb)
    result = {"image": list(rgb.shape),
              "bare_whole": timed_forwards([bare_forward(runtime, rgb)], args),
              "bare_small": timed_forwards([bare_forward(runtime, small, small_session)], args),
              "segmenter": {"tile": list(segmenter.tile), "tiles": len(crops),
                            **timings(lambda: segmenter.predict(rgb), args.repeats,
                                      args.warmups)}}
    if len(crops) > 1:
        result["bare_tiles"] = timed_forwards([bare_forward(runtime, c) for c in crops], args)
        whole = Segmenter.from_pretrained(args.model, runtime=name, threads=args.threads,
                                          tile=WHOLE_TILE)
        result["segmenter_whole"] = {"tile": list(whole.tile), "tiles": 1, **timings(
            lambda: whole.predict(rgb), args.repeats, args.warmups)}
    return result


def auto_worker(args: argparse.Namespace) -> dict:
    """``Segmenter.from_pretrained()`` (runtime auto): what it took, why, and its time, in
    turns with the same call without #31's label-free calibration (``scale="fov",
    threshold="card"``) and with the runtime's bare forward (OpenVINO's): what the
    calibration and the rest around the network cost."""
    from qsegment import Segmenter
    from qsegment.datasets import load_sample
    from qsegment.runtimes import auto_runtimes

    rgb = np.round(load_sample(None, IMAGE).image * 255).astype(np.uint8)
    segmenter = Segmenter.from_pretrained(args.model, threads=args.threads)
    plain = Segmenter.from_pretrained(args.model, threads=args.threads, threshold="card",
                                      scale="fov")
    calls = {"default": lambda: segmenter.predict(rgb), "uncalibrated": lambda: plain.predict(rgb)}
    if segmenter.runtime == "openvino":
        calls["bare"] = bare_forward(segmenter.runner, rgb)[0]
    timed = interleaved_timings(calls, args.repeats, args.warmups)
    return {"runtime": segmenter.runtime, "why": auto_runtimes()[1], **timed.pop("default"),
            "turns": timed}


class StageTimer:
    """Wraps functions and methods with timers, each charged to a stage: a stage gets a
    call's own time, the time of wrapped calls inside it going to their stages (per
    thread). The originals come back on exit."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._local = threading.local()
        self._originals: list[tuple[Any, str, Any, bool]] = []

    def wrap(self, owner: Any, attribute: str, stage: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = self._local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # the time of wrapped calls inside this one
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.seconds[stage] += elapsed - stack.pop()
                self.calls[stage] += 1
                if stack:
                    stack[-1] += elapsed

        self._originals.append((owner, attribute, original, attribute in vars(owner)))
        setattr(owner, attribute, timed)

    def restore(self) -> None:
        for owner, attribute, original, own in reversed(self._originals):
            if own:
                setattr(owner, attribute, original)
            else:  # inherited: the subclass gets its parent's back
                delattr(owner, attribute)
        self._originals.clear()


NETWORK = "network (the runtime's forward)"
DECODE = "decode (read_rgb)"
ENCODE = "mask array, PNG encode, SHA-256 (write_outputs)"
WRITE = "file write (atomic_write)"
THREADED_STAGES = (DECODE, ENCODE, WRITE)  # run in predict_files' reading/writing threads
# The call that runs the network, per runtime class: the engine's class and its method
FORWARDS = {"OpenVinoInt8": ("openvino", "InferRequest", "infer"),
            "LiteRtInt8": ("qsegment.runtimes.litert", "Int8Session", "run"),
            "OnnxInt8Runtime": ("onnxruntime", "InferenceSession", "run")}


@contextmanager
def cli_stages(runner: Any) -> Iterator[StageTimer]:
    """Timers on what ``predict_files`` calls with the runtime ``runner`` (restored after)."""
    import importlib

    from qsegment.inference import calibrate, maps, predict

    module, cls, method = FORWARDS[type(runner).__name__]
    timer = StageTimer()
    stages = [
        (predict, "read_rgb", DECODE),
        (calibrate, "fov_scale", "FOV (fov_scale)"),
        (calibrate, "scale_correction", "vessel calibre: the scale (scale_correction)"),
        (calibrate, "histogram", "the cut: the map's histogram (histogram)"),
        (maps, "resize_image", "resize to scale and back (resize_image, resize_map)"),
        (calibrate, "resize_map", "resize to scale and back (resize_image, resize_map)"),
        (predict, "to_rgb_float", "to float (to_rgb_float)"),
        (maps, "network_input", "float input, pad (network_input)"),
        (maps, "predict_logits", "crop, copies (predict_logits)"),
        (maps, "sigmoid", "probability: sigmoid"),
        (type(runner), "logits", "runtime's float call around the forward (logits)"),
        (predict.Segmenter, "_tiled", "tiles: cut, stitch (Segmenter._tiled)"),
        (predict.Segmenter, "predict", "threshold, dispatch (Segmenter.predict)"),
        (predict, "write_outputs", ENCODE),
        (predict, "atomic_write", WRITE),
        (getattr(importlib.import_module(module), cls), method, NETWORK),
    ]
    if runner.accepts_uint8:
        stages.append((type(runner), "probability_uint8",
                       "runtime's uint8 call around the forward: input, pad, probability "
                       "(probability_uint8)"))
    for owner, attribute, stage in stages:
        timer.wrap(owner, attribute, stage)
    try:
        yield timer
    finally:
        timer.restore()


def stages_worker(args: argparse.Namespace) -> dict:
    """Part 3: ``predict_files`` on ``--images`` CHASE images, split into stages."""
    from qsegment.datasets import default_data_dir
    from qsegment.images import read_rgb
    from qsegment.inference.predict import Segmenter, predict_files

    files = sorted(default_data_dir().glob("Image_*[LR].jpg"))[:args.images]
    segmenter = Segmenter.from_pretrained(args.model, runtime=args.cli_runtime,
                                          threads=args.threads)
    segmenter.predict(read_rgb(files[0]))  # warm-up: interpreters, compiled networks
    with tempfile.TemporaryDirectory(prefix="qsegment-bench-runtimes-") as out, \
            cli_stages(segmenter.runner) as timer:
        start = time.perf_counter()
        summary = predict_files(segmenter, [str(f) for f in files], Path(out), progress=False)
        wall = time.perf_counter() - start
    if summary.failed or not timer.calls[NETWORK]:
        raise RuntimeError(f"failed: {summary.failed}; network calls: {timer.calls[NETWORK]} "
                           "(none: the runtime's forward is no longer the wrapped method)")
    forward = ".".join(FORWARDS[type(segmenter.runner).__name__])
    return {"runtime": segmenter.runtime, "forward": forward,
            "images": len(files), "wall_s": wall,
            "stages_s": dict(timer.seconds), "calls": dict(timer.calls)}


WORKERS = {"peak": peak_worker, "auto": auto_worker, "stages": stages_worker}


def gmac_rate(entry: dict, macs: Callable[[int, int], int], peak: float) -> dict:
    """``entry`` (a timed forward) with its GMAC, GMAC/s and % of the peak."""
    gmac = sum(macs(*shape) for shape in entry["shapes"]) / 1e9
    rate = gmac / entry["ms"] * 1000
    return {**entry, "gmac": gmac, "gmac_s": rate, "percent_of_peak": 100 * rate / peak}


def shapes_text(shapes: list[list[int]]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for h, w in shapes:
        counts[f"{h}x{w}"] += 1
    return " + ".join(f"{n} x {s}" if n > 1 else s for s, n in counts.items())


def memory_verdict(name: str, row: dict, small: int) -> str:
    """What the GMAC/s at the small size against the whole image says, from the numbers."""
    whole, cached = row["bare_whole"], row["bare_small"]
    ratio = cached["gmac_s"] / whole["gmac_s"]
    noise = max(whole["spread"], cached["spread"])
    if abs(ratio - 1) <= noise:
        return (f"{name}: {ratio:.2f}x the GMAC/s at {small}x{small} than whole, within this "
                f"run's noise (runs spread up to {100 * noise:.0f} %): no conclusion; repeat "
                "on a quiet machine")
    if ratio >= BOUND_RATIO:
        return (f"{name}: {ratio:.2f}x the GMAC/s at {small}x{small} than whole: memory traffic "
                "of the large activations bounds the whole-image forward")
    if ratio <= 1 / BOUND_RATIO:
        return (f"{name}: {ratio:.2f}x the GMAC/s at {small}x{small} than whole: per-call "
                "overheads dominate the small input; memory traffic does not bound the whole one")
    return (f"{name}: about the same GMAC/s at {small}x{small} as whole ({ratio:.2f}x): not "
            f"memory-bound; the kernels run at {whole['percent_of_peak']:.0f} % of "
            "the measured peak")


def print_runtimes(rows: dict, peak: dict, auto: dict, small: int) -> None:
    print(f"\nint8 peak (OpenVINO, {PEAK_DEPTH} x conv3x3 {PEAK_CHANNELS}->{PEAK_CHANNELS} at "
          f"{PEAK_SIZE}x{PEAK_SIZE}, {', '.join(peak['convolution_kernels'])}): "
          f"{peak['gmac_s']:.1f} GMAC/s ({peak['ms']:.1f} ms; fastest run "
          f"{peak['macs'] / peak['fastest_ms'] / 1e6:.1f} GMAC/s); CPU int8 dot-product flags: "
          f"{', '.join(peak['int8_dot_product_flags']) or 'none'}")
    print("\n| runtime | bare int8 forward | input | ms (spread) | GMAC | GMAC/s | % of peak |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        for key, what in [("bare_whole", "whole image"), ("bare_tiles", "Segmenter's tiles"),
                          ("bare_small", f"{small}x{small} crop")]:
            if key in row:
                r = row[key]
                print(f"| {name} | {what} | {shapes_text(r['shapes'])} | {r['ms']:.1f} "
                      f"({100 * r['spread']:.0f} %) | "
                      f"{r['gmac']:.2f} | {r['gmac_s']:.1f} | {r['percent_of_peak']:.0f} % |")
    print("\n| runtime | Segmenter.predict (uint8 image) | ms (spread) | bare forward (same "
          "tiles), ms | whole / bare (target <= 1.15x) |\n|---|---|---:|---:|---:|")
    for name, row in rows.items():
        for key, bare in [("segmenter", "bare_tiles" if "bare_tiles" in row else "bare_whole"),
                          ("segmenter_whole", "bare_whole")]:
            if key in row:
                r = row[key]
                tiling = f"tile {r['tile'][0]}x{r['tile'][1]}: {r['tiles']} pass(es)"
                print(f"| {name} | {tiling} | {r['ms']:.1f} ({100 * r['spread']:.0f} %) | "
                      f"{row[bare]['ms']:.1f} | "
                      f"{r['ms'] / row[bare]['ms']:.2f}x |")
    fastest = min(rows, key=lambda n: rows[n]["segmenter"]["ms"])
    print(f"| auto -> {auto['runtime']} | default | {auto['ms']:.1f} "
          f"({100 * auto['spread']:.0f} %) | | |")
    print(f"\nruntime auto took {auto['runtime']} ({auto['why']}); auto / fastest Segmenter "
          f"({fastest}, default tiling): {auto['ms'] / rows[fastest]['segmenter']['ms']:.2f}x")
    if "bare" in auto["turns"]:
        bare, plain = auto["turns"]["bare"]["ms"], auto["turns"]["uncalibrated"]["ms"]
        print(f"in turns, same process: the default call {auto['ms']:.1f} ms, without the "
              f"label-free calibration (scale fov, threshold card) {plain:.1f} ms, the bare "
              f"forward {bare:.1f} ms: whole / bare {auto['ms'] / bare:.2f}x (target <= 1.15x), "
              f"{plain / bare:.2f}x without the calibration")
    for name, row in rows.items():
        print(memory_verdict(name, row, small))


def print_stages(stages: dict) -> None:
    n, wall = stages["images"], stages["wall_s"]
    per_image = wall / n * 1000
    print(f"\npredict_files ({stages['runtime']}, {n} CHASE images): {per_image:.1f} ms per "
          "image of wall time. Decoding and writing run in threads beside the network "
          "(predict_files' pool), so their shares overlap the others' and compete for the "
          f"same cores. The network stage is the time inside {stages['forward']}.")
    print("| stage | ms per image | % of wall per image |\n|---|---:|---:|")
    main_thread = 0.0
    for stage, seconds in sorted(stages["stages_s"].items(), key=lambda kv: -kv[1]):
        ms = seconds / n * 1000
        main_thread += 0 if stage in THREADED_STAGES else ms
        where = " (in reading/writing threads)" if stage in THREADED_STAGES else ""
        print(f"| {stage}{where} | {ms:.1f} | {100 * ms / per_image:.0f} % |")
    rest = per_image - main_thread
    print(f"| main thread, not in a stage (loop, waiting for decodes) | {rest:.1f} | "
          f"{100 * rest / per_image:.0f} % |")
    outside = {s: t for s, t in stages["stages_s"].items() if s != NETWORK}
    for where, candidates in [("", outside), (" in the main thread (adds to the wall time)",
                                              {s: t for s, t in outside.items()
                                               if s not in THREADED_STAGES})]:
        biggest = max(candidates, key=candidates.__getitem__)
        print(f"biggest stage outside the network{where}: {biggest}, "
              f"{candidates[biggest] / n * 1000:.1f} ms per image")


def run_worker(worker: str, args: argparse.Namespace) -> dict:
    passed = ["--repeats", str(args.repeats), "--warmups", str(args.warmups), "--threads",
              str(args.threads), "--model", args.model, "--images", str(args.images),
              "--small", str(args.small), "--cli-runtime", args.cli_runtime]
    done = subprocess.run([sys.executable, __file__, "--worker", worker, *passed],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the {worker} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from qsegment.pretrained import DEFAULT_MODEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs (15)")
    parser.add_argument("--warmups", type=int, default=3, help="untimed runs first (3)")
    parser.add_argument("--threads", type=int, default=2, help="runtime threads (2)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--runtimes", default="openvino,tflite-int8,onnx-int8",
                        help="the runtimes of part 2, comma-separated")
    parser.add_argument("--images", type=int, default=6, help="CHASE images of part 3 (6)")
    parser.add_argument("--small", type=int, default=256, help="the cache-sized input (256)")
    parser.add_argument("--cli-runtime", default="auto", help="part 3's runtime (auto)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS.get(args.worker, runtime_worker)(args)))
        return
    runtimes = args.runtimes.split(",")
    parts = ["peak", *runtimes, "auto", "stages"]
    results = {}
    for i, part in enumerate(parts, 1):
        print(f"[{i}/{len(parts)}] {part}", file=sys.stderr, flush=True)
        results[part] = run_worker(part, args)

    from qsegment.checkpoint import load_model
    from qsegment.models.profile import count_macs
    from qsegment.pretrained import resolve_checkpoint

    network = load_model(resolve_checkpoint(args.model))[0]
    macs_at: dict[tuple[int, int], int] = {}

    def macs(height: int, width: int) -> int:
        if (height, width) not in macs_at:
            macs_at[height, width] = count_macs(network, height, width)
        return macs_at[height, width]

    peak = results["peak"]["gmac_s"]
    rows = {name: {key: gmac_rate(value, macs, peak) if key.startswith("bare") else value
                   for key, value in results[name].items()} for name in runtimes}
    print(f"model {args.model}, CHASE_DB1 {IMAGE} ({rows[runtimes[0]]['image'][0]}x"
          f"{rows[runtimes[0]]['image'][1]}), {args.threads} threads, median of {args.repeats} "
          f"after {args.warmups} warm-ups")
    print_runtimes(rows, results["peak"], results["auto"], args.small)
    print_stages(results["stages"])
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "peak": results["peak"], "runtimes": rows,
             "auto": results["auto"], "stages": results["stages"]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
