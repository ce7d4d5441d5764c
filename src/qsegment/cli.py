"""The ``qsegment`` command: one thin sub-command per pipeline stage.

Each command parses its options and calls the library; the work lives in
:mod:`qsegment.engine` and friends, so everything here is also importable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .export import TARGETS
from .export.tflite_micro import BUDGETS

Handler = Callable[[argparse.Namespace], int]


def _parser_with(sub: argparse._SubParsersAction, name: str, summary: str, examples: str,
                 handler: Handler) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=summary,
                       epilog="examples:\n" + examples,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=handler)
    return p


def _add_tta(p: argparse.ArgumentParser, note: str) -> None:
    p.add_argument("--tta", choices=["none", "flip", "d8"], default="none",
                   help="test-time augmentation: average the logits over flips (4 passes) or "
                   f"flips and transposes (d8, 8 passes){note} (none)")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR",
                   help="CHASE_DB1 folder (default: $QSEGMENT_DATA, else ../shared/data/CHASEDB1)")


# --- models -----------------------------------------------------------------------------

def _models(args: argparse.Namespace) -> int:
    from .models import create_model, describe_model, list_models
    from .models.profile import model_stats

    rows = []
    for name in list_models():
        stats = model_stats(create_model(name), args.size, args.size)
        rows.append({"model": name, "description": describe_model(name), **stats})
    if args.json:
        print(json.dumps({"input": [args.size, args.size], "models": rows}, indent=2))
        return 0
    print(f"| model | params (M) | fp32 weights (MB) | int8 weights (MB) | "
          f"GMACs @ {args.size}x{args.size} |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']:.3f} | {r['fp32_mb']:.3f} | {r['int8_mb']:.3f} | "
              f"{r['gmacs']:.2f} |")
    return 0


# --- train ------------------------------------------------------------------------------

_TRAIN_OVERRIDES = {  # flag -> (type, help)
    "model": (str, "model name from `qsegment models`"),
    "epochs": (int, "number of epochs"),
    "batch_size": (int, "global batch size (split across torchrun ranks)"),
    "crop": (int, "random square crop size (0: whole images)"),
    "resize": (int, "train on images resized to this square, e.g. the IMX500's 336 (0: full)"),
    "repeats": (int, "visits of each image per epoch"),
    "loss": (str, "structure | bce_dice"),
    "optimizer": (str, "sgd | adamw"),
    "lr": (float, "initial learning rate"),
    "weight_decay": (float, "weight decay"),
    "scheduler": (str, "cosine_restarts | cosine"),
    "init": (str, "start from these weights (name, run folder or .safetensors) instead of "
                  "random ones: fine-tuning, e.g. on your images in CHASE_DB1's layout (--data)"),
    "ema": (float, "per-step decay of a moving average of the weights, validated and "
                   "saved instead of them, e.g. 0.999 (0: none)"),
    "teacher": (str, "distil from these weights (name or path): training targets blend "
                     "the labels with their d8-averaged probabilities; several, comma-separated, "
                     "are averaged"),
    "teacher_mix": (float, "the teacher's share of each training target (0.5)"),
    "val_every": (int, "epochs between validations"),
    "seed": (int, "random seed (weights, augmentation, order)"),
    "threads": (int, "torch CPU threads"),
    "max_minutes": (float, "stop cleanly after this many minutes of this call"),
    "device": (str, "auto | cpu | cuda | cuda:N"),
}


def _train(args: argparse.Namespace) -> int:
    from .engine.train import load_config, train

    overrides = {k: getattr(args, k) for k in _TRAIN_OVERRIDES}
    overrides["data"] = args.data
    for key in ("train_images", "val_images"):
        if getattr(args, key):
            overrides[key] = getattr(args, key).split(",")
    if args.upsample:
        overrides["model_args"] = {"upsample": args.upsample}
    for key in ("amp", "channels_last", "compile", "rotate90"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    cfg = load_config(args.preset, **overrides)
    card = train(cfg, args.out, resume=args.resume)
    if card:
        m, t = card["val_metrics"]["pooled"], card["threshold"]["value"]
        mt = card["val_metrics_at_threshold"]["pooled"]
        print(f"validation (t=0.5): Dice {m['dice']:.4f} Acc {m['acc']:.4f} AUC {m['auc']:.4f}")
        print(f"validation (t={t:.3f}, chosen on training images): Dice {mt['dice']:.4f} "
              f"Acc {mt['acc']:.4f}")
        print(f"run folder: {args.out}")
    return 0


# --- evaluate ---------------------------------------------------------------------------

def _evaluate(args: argparse.Namespace) -> int:
    from .engine.evaluate import format_table, int8_table, table_iv
    from .pretrained import load_model

    if str(args.checkpoint).endswith((".onnx", ".tflite")):
        if args.tta != "none":
            raise ValueError("--tta applies to float checkpoints, not to an int8 model file")
        if len(args.size) > 1:
            raise ValueError("an int8 model runs at one size: give at most one --size")
        result = int8_table(args.checkpoint, (args.size or [None])[0], args.data, out=args.out,
                            figures=not args.no_figures)
    else:
        model, card = load_model(args.checkpoint)
        if args.runtime != "torch":  # score the model as a CPU runtime runs it
            from .engine.predict import Segmenter

            model = Segmenter.from_pretrained(args.checkpoint, runtime=args.runtime).runner
            card = {**card, "name": f"{card.get('name', card['model'])} ({args.runtime})"}
        sizes = [None, *args.size]
        result = table_iv(model, card, args.data, sizes, out=args.out,
                          figures=not args.no_figures, tta=args.tta)
    print(format_table(result))
    if "dice_drop" in result:
        print(f"int8 minus float Dice at the same resolution: {-result['dice_drop']:+.4f}")
    print(f"threshold {result['threshold']:.3f} ({result['threshold_rule']}); pooled over "
          f"{len(result['val_images'])} validation images, inside the FOV")
    if args.out:
        print(f"wrote {Path(args.out) / 'metrics.json'}" +
              ("" if args.no_figures else " and figures"))
    return 0


# --- predict ----------------------------------------------------------------------------

def _predict(args: argparse.Namespace) -> int:
    from .engine.predict import Segmenter, predict_files

    segmenter = Segmenter.from_pretrained(args.model, threshold=args.threshold, tile=args.tile,
                                          runtime=args.runtime, tta=args.tta)
    summary = predict_files(segmenter, args.inputs, args.out, probability=args.prob,
                            overlay=args.overlay)
    for source, problem in summary.failed:
        print(f"qsegment predict: {source}: {problem}", file=sys.stderr)
    print(f"{len(summary.written)} image(s) segmented into {args.out} "
          f"(threshold {segmenter.threshold:.3f}), {len(summary.failed)} failed")
    return 1 if summary.failed else 0


# --- quantize, export, camera -----------------------------------------------------------

def _quantize(args: argparse.Namespace) -> int:
    from .quantize import quantize

    card = quantize(args.checkpoint, args.out, method=args.method, size=args.size,
                    calibration=args.calibration, epochs=args.epochs, lr=args.lr,
                    seed=args.seed, data=args.data)
    agree = card["agreement"]
    print(f"{card['method']} at {card['size']}x{card['size']}, calibrated on "
          f"{card['calibration']['count']} training images: wrote {args.out} and "
          f"{Path(args.out).with_suffix('.json')}")
    for name, label in (("float_vs_int8", "float vs int8"), ("ort_vs_mct", "ORT vs MCT")):
        a = agree[name]
        print(f"{label} on {agree['image']}: mask agreement {a['mask_agreement']:.4%}, "
              f"mean |prob diff| {a['prob_mean_abs']:.5f}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export

    if args.target == "imx500":
        if args.fit or args.board or args.calibration:
            raise ValueError("--fit, --board and --calibration apply to --target tflite-micro; "
                             "the IMX500 export takes a model `qsegment quantize` made")
        note = export(args.target, args.model, args.out, size=args.size)
        memory = note["memory"]
        print(f"{args.target}: {note['size']}x{note['size']} uses "
              f"{memory['required'] / 2**20:.2f} of {memory['available'] / 2**20:.2f} MB; "
              f"converted in {note['conversion_s']:.0f} s into {args.out}")
        print(f"camera input: {note['input']['camera_must_apply']}")
        if "warning" in note:
            print(f"warning: {note['warning']}", file=sys.stderr)
        return 0
    from .export.tflite_micro import format_fit_table

    card = export(args.target, args.model, args.out, size=args.size, fit=args.fit,
                  board=args.board or "spresense", calibration=args.calibration or 16,
                  data=args.data)
    if "fit" in card:
        print(format_fit_table(card["fit"]))
    size, agree = card["size"], card["agreement"]
    print(f"tflite-micro: {size}x{size} int8, flatbuffer {card['flatbuffer_bytes']:,} bytes, "
          f"tensor arena {card['arena_bytes']:,} bytes (measured by TFLite-Micro); operators: "
          + ", ".join(f"{k} x{v}" for k, v in card["operators"].items()))
    print(f"on {agree['image']}: TFLite-Micro vs LiteRT reference kernels max "
          f"{agree['tflm_vs_litert-ref']['max_lsb']} LSB; vs LiteRT XNNPACK max "
          f"{agree['tflm_vs_litert']['max_lsb']} LSB; float vs int8 mask agreement "
          f"{agree['float_vs_tflm']['mask_agreement']:.2%}")
    print(f"wrote {args.out}/qsegment.tflite, model_data.h, model_data.cc and qsegment.json")
    return 0


def _camera(args: argparse.Namespace) -> int:
    from .deploy.camera import read_deploy_info, run_camera

    info_path = args.info or Path(args.network).with_name("deploy.json")
    info = read_deploy_info(info_path) if args.info or info_path.is_file() else {}
    threshold = args.threshold if args.threshold is not None else float(
        info.get("output", {}).get("threshold", 0.5))
    frames = run_camera(args.network, threshold, size=info.get("size"), save=args.save,
                        save_every=args.save_every, seconds=args.seconds,
                        preview=not args.no_preview, transpose=args.transpose)
    print(f"{frames} frame(s) segmented in the sensor (threshold {threshold:.3f})")
    return 0


# --- bench ------------------------------------------------------------------------------

def _bench(args: argparse.Namespace) -> int:
    from .bench import RUNTIMES, markdown, run_benchmark, write_report

    size, repeats = (128, 2) if args.quick else (args.size, args.repeats)
    result = run_benchmark(size, repeats, args.model or None, tuple(args.runtime or RUNTIMES))
    print(markdown(result))
    if args.out:
        write_report(result, args.out, "qsegment " + " ".join(sys.argv[1:]))
        print(f"wrote {args.out}")
    return 0


# --- entry point ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qsegment",
        description="Ultra-low-power retinal vessel segmentation: train, evaluate and deploy "
                    "the Q-Segment network and its baselines on CHASE_DB1.",
        epilog="examples:\n  qsegment models\n  qsegment train --preset fast --out runs/fast\n"
               "  qsegment evaluate runs/fast --size 336 --out runs/fast/eval\n"
               "  qsegment predict fundus.jpg -o out/ --overlay\n"
               "  qsegment quantize -o q/ptq.onnx\n"
               "  qsegment export q/ptq.onnx --target imx500 -o deploy/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"qsegment {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    p = _parser_with(sub, "models", "Print the models table (paper Table II): parameters, "
                     "weight sizes and MACs, computed from the models.",
                     "  qsegment models\n  qsegment models --size 336 --json", _models)
    p.add_argument("--size", type=int, default=960, help="square input size for MACs (960)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _parser_with(sub, "train", "Train a model on CHASE_DB1 from a preset "
                     "(paper: the paper's GPU recipe; fast: a 2-core CPU recipe). Any preset "
                     "field can be overridden. Runs data-parallel under torchrun.",
                     "  qsegment train --preset fast --out runs/fast\n"
                     "  qsegment train --preset paper --out runs/paper --device cuda\n"
                     "  qsegment train --out runs/fast --resume\n"
                     "  torchrun --nproc-per-node 2 -m qsegment train --preset fast --out runs/ddp",
                     _train)
    p.add_argument("--preset", default="fast", help="paper | fast | path to a YAML file (fast)")
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its recipe; "
                   "--device, --threads, --max-minutes, --channels-last and --compile apply")
    _add_data(p)
    p.add_argument("--upsample", choices=["nearest", "unpool"],
                   help="Q-Segment up-sampling (nearest: IMX500-deployable)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC activations (the presets use them: faster on CPU and GPU)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step (on an H100 10%% faster per epoch "
                   "after a 1.5-minute first epoch; slower on a small CPU)")
    p.add_argument("--rotate90", action=argparse.BooleanOptionalAction, default=None,
                   help="augment with random quarter turns too (all 8 symmetries of a crop)")
    p.add_argument("--train-images", help="comma-separated image names (default Image_01L..10R)")
    p.add_argument("--val-images", help="comma-separated image names (default Image_11L..14R)")
    for name, (kind, help_text) in _TRAIN_OVERRIDES.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=help_text)

    p = _parser_with(sub, "evaluate", "Score a model on the validation images the way the "
                     "literature does (Dice, Acc, AUC, Se, Sp, IoU, MCC inside the FOV, at full "
                     "resolution and optionally at lower inference sizes), beside the second "
                     "human observer; writes metrics.json and figures.",
                     "  qsegment evaluate qsegment-nearest --out eval/\n"
                     "  qsegment evaluate runs/fast --size 336 256 --out runs/fast/eval\n"
                     "  qsegment evaluate q/ptq.onnx --out q/eval   # int8 beside float\n"
                     "  qsegment evaluate mcu/qsegment.tflite      # TFLite-Micro interpreter",
                     _evaluate)
    p.add_argument("checkpoint", nargs="?", default="qsegment-nearest",
                   help="pretrained name, run folder, .safetensors, or an int8 model scored "
                        "beside its float model at its size: .onnx from `qsegment quantize`, "
                        ".tflite from `qsegment export --target tflite-micro` "
                        "(qsegment-nearest)")
    _add_data(p)
    p.add_argument("--size", type=int, nargs="*", default=[],
                   help="extra square inference sizes (image resized, probabilities resized back)")
    p.add_argument("--out", type=Path, help="folder for metrics.json and figures")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--runtime", choices=["torch", "tflite-int8", "onnx", "onnx-int8"],
                   default="torch", help="run a checkpoint as `qsegment predict --runtime` "
                   "would (torch)")
    _add_tta(p, "; the threshold is then chosen anew on the training images with the same "
             "views")

    p = _parser_with(sub, "predict", "Segment your own fundus images (files, folders or glob "
                     "patterns) on the CPU: writes NAME_mask.png (0/255, the input's size) and "
                     "on request the probability map and a colour overlay. Any size, gray, RGBA "
                     "or 16-bit; large images are tiled. Exit code 1 if any input failed.",
                     "  qsegment predict fundus.jpg -o out/\n"
                     "  qsegment predict photos/ 'more/*.png' -o out/ --prob --overlay\n"
                     "  qsegment predict big.tif -o out/ --model runs/fast --threshold 0.5",
                     _predict)
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--model", default="qsegment-nearest",
                   help="pretrained name, run folder or .safetensors (qsegment-nearest)")
    p.add_argument("--threshold", type=float,
                   help="decision threshold (default: the model card's, chosen on training data)")
    p.add_argument("--prob", action="store_true", help="also write NAME_prob.png")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png")
    p.add_argument("--runtime", choices=["tflite-int8", "torch", "onnx", "onnx-int8"],
                   default="tflite-int8",
                   help="tflite-int8: int8 TFLite in LiteRT/XNNPACK, the fastest (builds and "
                        "caches one model per new image size, ~10 s once); torch: PyTorch "
                        "eager; onnx / onnx-int8: ONNX Runtime fp32 / static int8 "
                        "(tflite-int8)")
    p.add_argument("--tile", type=int, default=1024,
                   help="tile size for large images, a multiple of 64 (1024)")
    _add_tta(p, "; the card's threshold still applies")

    p = _parser_with(sub, "quantize", "Quantize a model to INT8 for the Sony IMX500 with "
                     "Sony's Model Compression Toolkit: post-training (ptq), gradient-based "
                     "(gptq) or quantization-aware training from the float weights (qat). "
                     "Calibration: whole training images resized to the deployment size. "
                     "Writes MCT's ONNX and a JSON card beside it.",
                     "  qsegment quantize qsegment-nearest -o q/ptq.onnx --size 280\n"
                     "  qsegment quantize runs/fast -o q/gptq.onnx --method gptq --size 280\n"
                     "  qsegment quantize runs/fast -o q/qat.onnx --method qat --epochs 3\n"
                     "  qsegment quantize -o q/ptq.onnx     # size: largest that fits (Java)",
                     _quantize)
    p.add_argument("checkpoint", nargs="?", default="qsegment-nearest",
                   help="pretrained name, run folder or .safetensors (qsegment-nearest)")
    p.add_argument("-o", "--out", required=True, type=Path, help="quantized .onnx to write")
    p.add_argument("--method", choices=["ptq", "gptq", "qat"], default="ptq",
                   help="quantization method (ptq)")
    p.add_argument("--size", type=int,
                   help="square deployment size, a multiple of 8 (default: the largest that "
                        "fits the IMX500, found with the converter's memory report)")
    p.add_argument("--calibration", type=int, default=16,
                   help="number of training images for calibration (16)")
    p.add_argument("--epochs", type=int, default=3, help="GPTQ or QAT epochs (3)")
    p.add_argument("--lr", type=float, default=1e-4, help="QAT learning rate (1e-4)")
    p.add_argument("--seed", type=int, default=0, help="calibration draw and QAT order (0)")
    _add_data(p)

    p = _parser_with(sub, "export", "Export a model for a device. imx500: runs Sony's "
                     "converter (imxconv-pt, needs Java 17) on an MCT-quantized ONNX and writes "
                     "packerOut.zip (imx500-package turns it into network.rpk on the Pi), the "
                     "memory report and deploy.json; stops with the largest size that fits when "
                     "the network does not fit the 8 MB on chip. tflite-micro: quantizes a "
                     "checkpoint to a fully int8 .tflite, checks it with the TFLite-Micro "
                     "interpreter (operators, tensor arena) and writes C sources.",
                     "  qsegment export q/ptq.onnx --target imx500 -o deploy/\n"
                     "  qsegment export q/ptq.onnx --target imx500 --size 256 -o deploy256/\n"
                     "  qsegment export qsegment-nearest-312 --target tflite-micro -o mcu/\n"
                     "  qsegment export qsegment-nearest-312 --target tflite-micro --fit -o mcu/\n"
                     "  qsegment export runs/fast --target tflite-micro --size 96 -o mcu96/",
                     _export)
    p.add_argument("model", help="imx500: MCT-quantized .onnx from `qsegment quantize`; "
                                 "tflite-micro: pretrained name, run folder or .safetensors")
    p.add_argument("--target", choices=list(TARGETS), default="imx500",
                   help="; ".join(f"{k}: {v[1]}" for k, v in TARGETS.items()))
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--size", type=int,
                   help="square input size (default: the largest that fits the device)")
    p.add_argument("--board", choices=list(BUDGETS),
                   help="tflite-micro: memory budget the default size must fit (spresense)")
    p.add_argument("--fit", action="store_true",
                   help="tflite-micro: also find the largest input for every budget and print "
                        "the table")
    p.add_argument("--calibration", type=int,
                   help="tflite-micro: training images to calibrate on (16)")
    _add_data(p)

    p = _parser_with(sub, "camera", "Run the exported network on the Raspberry Pi AI Camera "
                     "(picamera2): overlays the in-sensor vessel map on the preview, prints the "
                     "sensor's DNN runtime and the frame rate, optionally saves frames and maps.",
                     "  qsegment camera out/network.rpk --info deploy/deploy.json\n"
                     "  qsegment camera out/network.rpk --save shots/ --save-every 30",
                     _camera)
    p.add_argument("network", type=Path, help="network.rpk from imx500-package")
    p.add_argument("--info", type=Path,
                   help="the export's deploy.json (default: deploy.json beside the .rpk)")
    p.add_argument("--threshold", type=float, help="decision threshold (default: deploy.json's)")
    p.add_argument("--save", type=Path, help="folder for saved frames and vessel maps")
    p.add_argument("--save-every", type=int, default=30, help="save every Nth frame (30)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    p.add_argument("--no-preview", action="store_true", help="no preview window")
    p.add_argument("--transpose", action="store_true",
                   help="swap the output map's axes (if the map appears mirrored diagonally)")

    p = _parser_with(sub, "bench", "Benchmark every model side by side on this CPU: parameters, "
                     "fp32/int8 size, MACs, latency (median, p90), throughput and peak RSS per "
                     "runtime (PyTorch, ONNX Runtime fp32 and int8, int8 TFLite in LiteRT), each "
                     "in its own process; the paper's Table III is printed beside, labelled as "
                     "the paper's.",
                     "  qsegment bench --out docs/BENCHMARKS.md\n"
                     "  qsegment bench --quick\n"
                     "  qsegment bench --model qsegment tnet --runtime onnx onnx-int8",
                     _bench)
    p.add_argument("--size", type=int, default=960, help="square input size (960)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs after warm-up (10)")
    p.add_argument("--quick", action="store_true", help="128x128, 2 runs: a smoke test")
    p.add_argument("--model", nargs="*", help="models to run (default: all)")
    p.add_argument("--runtime", nargs="*", choices=["torch", "onnx", "onnx-int8", "tflite-int8"],
                   help="runtimes to run (default: all)")
    p.add_argument("--out", type=Path,
                   help="write this Markdown report (with .json and _fig3.png beside it)")
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input or an impossible request: a message, not a traceback.
    Imported only once something failed, so `--help` never waits for torch."""
    from .checkpoint import CheckpointError
    from .data import DatasetError
    from .deploy.camera import CameraError
    from .engine.predict import ImageError
    from .engine.train import TrainingError
    from .export.imx500 import Imx500Error
    from .export.tflite import ConversionError
    from .export.tflite_micro import MicroError

    return (DatasetError, CheckpointError, ImageError, TrainingError, Imx500Error, MicroError,
            ConversionError, CameraError, ValueError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"qsegment {sys.argv[1] if len(sys.argv) > 1 else ''}: error: {err}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
