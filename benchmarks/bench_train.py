"""Seconds per training epoch of a preset in fp32 and with mixed precision (fp16 on a
GPU, bf16 on the CPU), each with NCHW and with NHWC (channels-last) activations, and
optionally compiled: a few real epochs of `qsegment train` each, timed from their log.

The first epochs are left out of the median (cuDNN's autotuning, torch.compile,
warm-up). The projection multiplies the median by the preset's epochs and leaves out
validation.

    python benchmarks/bench_train.py --preset paper --epochs 30 --json bench.json
    python benchmarks/bench_train.py --preset paper --device cuda --variants mixed-nhwc \
        mixed-nhwc-compiled
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import tempfile
from pathlib import Path

from qsegment.engine.train import load_config, train

WARM_UP_EPOCHS = 3
VARIANTS = {  # name: (amp, channels_last, compile)
    f"{precision}-{layout}{suffix}": (precision == "mixed", layout == "nhwc", bool(suffix))
    for suffix in ("", "-compiled") for precision in ("fp32", "mixed")
    for layout in ("nchw", "nhwc")}


def epoch_seconds(preset: str, epochs: int, variant: str, device: str) -> float:
    """Median wall seconds per epoch over a short run of ``preset``."""
    amp, channels_last, compile = VARIANTS[variant]
    cfg = load_config(preset, epochs=epochs, val_every=10**9, amp=amp,
                      channels_last=channels_last, compile=compile, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", progress=False)
        with open(Path(tmp) / "run" / "log.csv") as f:
            walls = [float(row["wall_s"]) for row in csv.DictReader(f)]
    return statistics.median(b - a for a, b in itertools.pairwise(walls[WARM_UP_EPOCHS:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per timed run (30)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, metavar="VARIANT",
                        default=[v for v in VARIANTS if not v.endswith("compiled")],
                        help=f"which to time, of {', '.join(VARIANTS)} (the uncompiled four)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.epochs <= WARM_UP_EPOCHS + 1:
        parser.error(f"--epochs must exceed {WARM_UP_EPOCHS + 1}")
    total = load_config(args.preset).epochs
    rows = []
    for variant in args.variants:
        seconds = epoch_seconds(args.preset, args.epochs, variant, args.device)
        rows.append({"preset": args.preset, "variant": variant, "epoch_s": seconds,
                     "projected_min": seconds * total / 60})
    print(f"| preset | variant | s/epoch | {total} epochs (min) |\n|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['variant']} | {r['epoch_s']:.3f} | "
              f"{r['projected_min']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
