"""One CPU training step (forward, structure loss, backward, AdamW) of a model on a
batch of crops: eager fp32, eager bf16 autocast and torch.compile'd fp32.

Decides what the `fast` preset uses; bench_train.py measures whole epochs.

    python benchmarks/bench_train_step.py [--model qsegment] [--crop 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from qsegment.losses import structure_loss
from qsegment.models import create_model


def step_ms(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
            y: torch.Tensor, bf16: bool, repeats: int) -> tuple[float, float]:
    """(seconds of the first step, median ms of ``repeats`` steps after two warm-ups)."""
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
        loss = structure_loss(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    step()
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qsegment")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.crop, args.crop)
    y = (torch.rand(args.batch_size, 1, args.crop, args.crop) > 0.9).float()
    print("| variant | first step (s) | step (ms) |\n|---|---:|---:|")
    for name, compiled, bf16 in (("eager fp32", False, False), ("eager bf16", False, True),
                                 ("compiled fp32", True, False)):
        model = create_model(args.model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        net = torch.compile(model) if compiled else model
        first, ms = step_ms(net, optimizer, x, y, bf16, args.repeats)
        print(f"| {name} | {first:.1f} | {ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
