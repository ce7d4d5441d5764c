"""Why `qsegment-imx` looks the way it does: the IMX500 converter's memory report at
640x640 for each way of running Q-Segment at half resolution that was tried.

Each candidate is built from `qsegment-imx` (random weights: the memory does not depend
on them), quantized with MCT (PTQ on two random 64x64 images), exported, re-shaped to
640x640 and given to `imxconv-pt --memory-report --no-input-persistency`, as `qsegment
export` does. A candidate the converter refuses is listed with its message.

    python benchmarks/bench_imx500_variants.py [--size 640] [--json out.json]

About 30-50 s per candidate on this machine's two cores. Needs Java 17 and Sony's toolchain.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


class _Upsampled(nn.Module):
    """A half-resolution network whose 1-channel logits are up-sampled in the graph."""

    def __init__(self, net: nn.Module, up: nn.Module) -> None:
        super().__init__()
        self.net, self.up = net, up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.net.forward_phases(x))


def _imx(last_skip: bool = False, head_channels: int = 4) -> nn.Module:
    from qsegment.models import create_model
    from qsegment.models.blocks import conv_bn

    net = create_model("qsegment-imx")
    if last_skip:
        net.decoder[2].skip = conv_bn(16, 16, 1)
    net.head = nn.Conv2d(16, head_channels, 3, padding=1)
    return net


def _phases(last_skip: bool) -> nn.Module:
    from qsegment.export.imx500.quantize import sensor_graph

    return sensor_graph(_imx(last_skip))


CANDIDATES: dict[str, Callable[[], nn.Module]] = {
    "1-channel logits, nearest x2 in the graph":
        lambda: _Upsampled(_imx(head_channels=1), nn.Upsample(scale_factor=2)),
    "16-channel features, ConvTranspose 2x2 in the graph":
        lambda: _Upsampled(_imx(head_channels=16), nn.ConvTranspose2d(16, 1, 2, stride=2)),
    "2x2 phases, ConvTranspose 2x2 (4 -> 1) in the graph":
        lambda: _Upsampled(_imx(), nn.ConvTranspose2d(4, 1, 2, stride=2)),
    "2x2 phases, PixelShuffle in the graph":
        lambda: _Upsampled(_imx(), nn.PixelShuffle(2)),
    "2x2 phases to the host, projection skip in the last block": lambda: _phases(True),
    "2x2 phases to the host (qsegment-imx)": lambda: _phases(False),
}


def measure(build: Callable[[], nn.Module], size: int, folder: Path) -> dict:
    from qsegment.export.imx500.convert import Imx500Error, memory_report
    from qsegment.export.imx500.quantize import export_quantized, quantize_model

    torch.manual_seed(0)
    model = build().eval()
    images = torch.rand(2, 3, 64, 64)
    # the wrapped candidates have no forward_phases of their own: quantized as they are
    qmodel, _ = quantize_model(model, images)
    onnx = export_quantized(qmodel, folder / "candidate.onnx", images)
    try:
        report = memory_report(onnx, size)
    except Imx500Error as err:  # the converter's own words: its line that says why
        lines = str(err).splitlines()
        line = next((line for line in lines if "unsupported" in line), lines[-1])
        return {"error": line.split("CODE: ")[-1].split(" [/")[0].strip()}
    return {"memory_mb": round(report.required / 2**20, 2), "fits": report.fits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="qsegment-variants-") as tmp:
        for name, build in CANDIDATES.items():
            rows[name] = measure(build, args.size, Path(tmp))
            print(json.dumps({name: rows[name]}), flush=True)
    print(f"\n| half-resolution Q-Segment, output | memory at {args.size}x{args.size} | fits |")
    print("|---|---|---|")
    for name, row in rows.items():
        cells = (f"{row['memory_mb']:.2f} MB | {'yes' if row['fits'] else 'no'}"
                 if "memory_mb" in row else f"refused: {row['error']} | no")
        print(f"| {name} | {cells} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
