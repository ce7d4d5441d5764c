"""Tiny end-to-end runs on real CHASE_DB1 images (small crops, few steps)."""

import contextlib
import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from qsegment import load_model
from qsegment.checkpoint import CheckpointError, read_checkpoint
from qsegment.cli import main
from qsegment.data import resize_sample, to_input
from qsegment.datasets import Split, load_sample
from qsegment.engine import train as train_module
from qsegment.engine.config import ConfigError
from qsegment.engine.evaluate import predict_samples, score, table_iv, train_threshold
from qsegment.engine.train import TrainingError, load_config, lr_factor, soften_labels, train
from qsegment.export import tflite
from qsegment.export.onnx import fake_quantized
from qsegment.export.tflite import calibrate, load_folded
from qsegment.models import create_model
from qsegment.pretrained import resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = dict(train_images=["Image_01L", "Image_02R"], val_images=["Image_11L"], crop=64,
            batch_size=2, repeats=2, val_every=2, threads=1, epochs=4)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def test_presets_load_and_overrides_win():
    paper = load_config("paper")
    assert (paper.optimizer, paper.lr, paper.batch_size, paper.epochs) == ("sgd", 1e-3, 8, 4000)
    assert (paper.scheduler, paper.restart_epochs, paper.amp, paper.loss) == (
        "cosine_restarts", 20, True, "structure")
    assert paper.crop == 0  # full-resolution images
    assert load_config("fast", lr=0.5).lr == 0.5
    with pytest.raises(ConfigError, match="preset not found"):
        load_config("nope")
    with pytest.raises(ConfigError, match="unknown config field"):
        load_config("fast", colour="red")


def test_warm_restarts_every_20_epochs():
    cfg = load_config("paper")
    assert lr_factor(cfg, 0) == 1.0 and lr_factor(cfg, 20) == 1.0 and lr_factor(cfg, 40) == 1.0
    assert lr_factor(cfg, 10) == pytest.approx(0.5) and lr_factor(cfg, 19.99) < 1e-5
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 20)
    for t in (3.5, 27.25, 59.0):
        sched.step(t)
        assert lr_factor(cfg, t) == pytest.approx(sched.get_last_lr()[0])


def test_train_writes_a_run_folder_that_explains_itself(tmp_path, data_dir):
    out = tmp_path / "run"
    card = train(load_config("fast", data=str(data_dir), **TINY), out, progress=False)
    for name in ("config.yaml", "command.txt", "log.csv", "last.safetensors", "last.json",
                 "best.safetensors", "best.json", "curve.png"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tensorboard").iterdir())
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,wall_s,lr,loss") and len(rows) == 1 + 4
    assert yaml.safe_load((out / "config.yaml").read_text())["crop"] == 64
    assert card["epochs_done"] == 4 and card["data"]["train"] == TINY["train_images"]
    assert 0 < card["threshold"]["value"] < 1
    assert set(card["val_metrics"]["pooled"]) == {"dice", "acc", "auc", "se", "sp", "iou", "mcc"}
    assert json.loads((out / "last.json").read_text())["threshold"] == card["threshold"]
    model, loaded_card = load_model(out)
    assert loaded_card["model"] == "qsegment" and not model.training
    with pytest.raises(TrainingError, match="holds a run already"):
        train(load_config("fast", data=str(data_dir), **TINY), out, progress=False)
    # two runs' curves in one figure (how RESULTS.md compares recipes)
    from PIL import Image

    from qsegment import viz

    viz.training_curve({"a": out / "log.csv", "b": out / "log.csv"}, tmp_path / "both.png")
    assert Image.open(tmp_path / "both.png").size == Image.open(out / "curve.png").size


def test_same_seed_same_weights_and_resume_after_kill(tmp_path, data_dir):
    """Two runs with one seed agree; a run killed mid-way and resumed ends identical."""
    cfg = dict(TINY, epochs=6, val_every=100)
    whole = tmp_path / "whole"
    train(load_config("fast", data=str(data_dir), **cfg), whole, progress=False)

    killed = tmp_path / "killed"
    overrides = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()
                 if k not in ("train_images", "val_images")]
    cmd = [sys.executable, "-m", "qsegment", "train", "--preset", "fast", "--out", str(killed),
           "--data", str(data_dir), "--train-images", ",".join(cfg["train_images"]),
           "--val-images", ",".join(cfg["val_images"]), *overrides]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    card = killed / "last.json"  # written after last.safetensors
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(card.read_text())["epochs_done"] >= 2:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = read_checkpoint(killed / "last.safetensors")[1]["resume"]["epoch"]
    assert 2 <= done < 6, "the kill should land mid-run"
    assert main(["train", "--out", str(killed), "--resume"]) == 0
    a, b = _weights(whole / "last.safetensors"), _weights(killed / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_max_minutes_stops_cleanly_and_a_resumed_call_sets_its_own(tmp_path, data_dir):
    """--max-minutes ends a call after the current epoch with a finished card; resuming
    keeps the recipe but takes runtime options (here: no time limit) from the new call."""
    out = tmp_path / "run"
    cfg = dict(TINY, epochs=3, val_every=100)
    card = train(load_config("fast", data=str(data_dir), max_minutes=1e-6, **cfg), out,
                 progress=False)
    assert card["epochs_done"] == 1 and "val_metrics" in card
    card = train(load_config("fast", threads=1), out, resume=True, progress=False)
    assert card["epochs_done"] == 3
    assert card["config"]["crop"] == TINY["crop"]  # the run's recipe, not the fast preset's


def test_ema_weights_are_the_ones_validated_saved_and_resumed(tmp_path, data_dir):
    cfg = dict(TINY, epochs=2, val_every=100, ema=0.9)
    whole = tmp_path / "whole"
    card = train(load_config("fast", data=str(data_dir), **cfg), whole, progress=False)
    tensors = read_checkpoint(whole / "last.safetensors")[0]
    average = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    raw = {k.removeprefix("train."): v for k, v in tensors.items() if k.startswith("train.")}
    assert average.keys() == raw.keys()
    assert any(not torch.allclose(average[k], raw[k]) for k in raw if raw[k].is_floating_point())
    assert int(tensors["ema.n_averaged"]) == 2 * 2  # 2 epochs of 2 steps
    model, _ = load_model(whole)  # the average is what loads and what was scored
    val = [load_sample(data_dir, "Image_11L")]
    rescored = score(predict_samples(model, val), val)["pooled"]
    assert rescored == pytest.approx(card["val_metrics"]["pooled"], abs=1e-6)

    split = tmp_path / "split"
    train(load_config("fast", data=str(data_dir), max_minutes=1e-6, **cfg), split,
          progress=False)
    train(load_config("fast", threads=1), split, resume=True, progress=False)
    resumed = read_checkpoint(split / "last.safetensors")[0]
    for key in (k for k in tensors if k.startswith(("model.", "train.", "ema."))):
        assert torch.allclose(tensors[key], resumed[key], atol=1e-6), key


def test_compiled_training_step_matches_eager(tmp_path, data_dir, monkeypatch):
    """--compile traces the forward and loss whole (both batch sizes of an epoch) and
    trains the same weights, saved under the module's own names. Inductor's code
    generation takes a minute on this CPU, so the graphs run on the aot_eager backend;
    fp32 and SGD (the paper's optimizer), since autocast and Adam magnify rounding."""
    compiled, calls = torch.compile, []

    def traced(fn, **kwargs):
        calls.append(fn.__name__)
        return compiled(fn, backend="aot_eager", fullgraph=True, **kwargs)

    monkeypatch.setattr(torch, "compile", traced)
    cfg = dict(TINY, train_images=["Image_01L", "Image_02R", "Image_03L"], epochs=2,
               val_every=100, amp=False)
    runs = {name: tmp_path / name for name in ("eager", "compiled")}
    for name, out in runs.items():
        train(load_config("paper", data=str(data_dir), compile=name == "compiled", **cfg), out,
              progress=False)
    assert calls == ["forward_loss"]  # the compiled run only, once
    eager, compiled_ = ([float(row["loss"]) for row in csv.DictReader((out / "log.csv").open())]
                        for out in runs.values())
    assert compiled_ == pytest.approx(eager, rel=1e-4)
    eager, compiled_ = (_weights(out / "last.safetensors") for out in runs.values())
    assert eager.keys() == compiled_.keys()
    for key in eager:
        assert torch.allclose(eager[key], compiled_[key], atol=1e-3), key


def test_a_teacher_softens_the_training_labels(tmp_path, data_dir):
    """--teacher blends each label with the teacher's d8-averaged probability map: soft
    where the teacher is unsure (vessel edges), near the label elsewhere; mix 0 keeps the
    labels, several teachers are averaged, and the run's config records the teacher."""
    samples = [resize_sample(load_sample(data_dir, "Image_01L"), 256)]
    soft = soften_labels(samples, "qsegment-nearest", 0.5)[0].label
    hard, fov = samples[0].label, samples[0].fov
    assert soft.dtype == np.float32 and soft.min() >= 0.0 and soft.max() <= 1.0
    assert np.abs(soft - hard)[fov].mean() < 0.1  # the teacher agrees on most pixels
    assert ((soft > 0.1) & (soft < 0.9)).mean() > 0.01  # and is unsure on some
    same = soften_labels(samples, "qsegment-nearest", 0.0)[0].label
    assert np.array_equal(same, hard.astype(np.float32))
    with pytest.raises(ConfigError, match="teacher_mix"):
        soften_labels(samples, "qsegment-nearest", 1.5)
    # comma-separated teachers: their probabilities averaged
    a, b = (soften_labels(samples, t, 1.0)[0].label
            for t in ("qsegment-nearest", "qsegment-nearest-crop384"))
    both = soften_labels(samples, "qsegment-nearest,qsegment-nearest-crop384", 1.0)[0].label
    assert np.abs(a - b).max() > 0.1 and np.allclose(both, (a + b) / 2, atol=1e-6)

    cfg = dict(TINY, epochs=1, resize=128, val_every=100)
    for name, teacher in (("plain", ""), ("taught", "qsegment-nearest")):
        train(load_config("fast", data=str(data_dir), teacher=teacher, **cfg), tmp_path / name,
              progress=False)
    assert yaml.safe_load((tmp_path / "taught" / "config.yaml").read_text())["teacher"] == (
        "qsegment-nearest")
    plain, taught = (_weights(tmp_path / n / "last.safetensors") for n in ("plain", "taught"))
    assert any(not torch.equal(plain[k], taught[k]) for k in plain)


def test_init_fine_tunes_from_given_weights(tmp_path, data_dir, monkeypatch):
    """--init starts from a checkpoint's weights instead of random ones (with a learning
    rate of ~0 they come out unchanged); the config names them so that they resolve from
    anywhere; weights of another architecture are refused."""
    cfg = dict(TINY, epochs=1, resize=128, val_every=100, data=str(data_dir))
    train(load_config("fast", init="qsegment-nearest", lr=1e-12, **cfg), tmp_path / "ft",
          progress=False)
    shipped = _weights(resolve_checkpoint("qsegment-nearest"))
    tuned = _weights(tmp_path / "ft" / "last.safetensors")
    learned = [k for k in shipped if "running_" not in k and "num_batches" not in k]
    assert len(learned) > 10
    for key in learned:
        assert torch.allclose(tuned[key], shipped[key], atol=1e-6), key
    assert yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["init"] == (
        "qsegment-nearest")
    monkeypatch.chdir(tmp_path)  # a relative run folder is recorded as an absolute path
    train(load_config("fast", init="ft", lr=1e-12, **cfg), "again", progress=False)
    assert yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())["init"] == str(
        (tmp_path / "ft").resolve())
    with pytest.raises(CheckpointError, match=r"qsegment-nearest\.safetensors: weights do not fit"):
        train(load_config("fast", model="tnet", init="qsegment-nearest", **cfg),
              tmp_path / "wrong", progress=False)


def test_init_of_the_imx_variant_from_qsegment_weights(tmp_path, data_dir, capsys):
    """qsegment-imx starts from Q-Segment weights: every tensor of the same name and shape
    (all but the stem's and the head's) is loaded, and the log says how many."""
    cfg = dict(TINY, epochs=1, resize=128, val_every=100, data=str(data_dir))
    train(load_config("fast", model="qsegment-imx", init="qsegment-nearest", lr=1e-12, **cfg),
          tmp_path / "imx", progress=False)
    assert "init: 181 of 184 tensors from qsegment" in capsys.readouterr().err
    shipped = _weights(resolve_checkpoint("qsegment-nearest"))
    tuned = _weights(tmp_path / "imx" / "last.safetensors")
    assert torch.allclose(tuned["model.decoder.0.conv3x3.0.weight"],
                          shipped["model.decoder.0.conv3x3.0.weight"],
                          atol=1e-6)
    assert tuned["model.head.weight"].shape == (4, 16, 3, 3)


_POISON_CALLS = {"n": 0}


def poisoned_loss(logits, target):
    """The structure loss, NaN at the fifth call (epoch 3 of 2 steps each): a loss row that
    a test registers."""
    from qsegment.losses import structure_loss

    _POISON_CALLS["n"] += 1
    loss = structure_loss(logits, target)
    return loss * float("nan") if _POISON_CALLS["n"] == 5 else loss


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    from qsegment.engine.config import LOSSES
    from qsegment.registry import Entry

    _POISON_CALLS["n"] = 0
    LOSSES.add(Entry("poisoned", f"{__name__}:poisoned_loss", "NaN at the fifth call"))
    out = tmp_path / "nan"
    try:
        with pytest.raises(TrainingError, match="loss became nan at epoch 3, step 1"):
            train(load_config("fast", data=str(data_dir), **{**TINY, "loss": "poisoned"}), out,
                  progress=False)
    finally:
        LOSSES.remove("poisoned")
    _, meta = read_checkpoint(out / "last.safetensors")
    assert meta["resume"]["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in _weights(out / "last.safetensors").values())


def test_cli_reports_bad_data_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["train", "--out", str(tmp_path / "x"), "--data", str(tmp_path / "missing")])
    assert refused.value.code == 2
    assert "argument --data: " in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path, data_dir):
    # SGD: Adam's first steps are sign(gradient) * lr, which turns float noise in
    # near-zero gradients (conv biases before BatchNorm) into whole steps. fp32 and NCHW:
    # bf16, and NHWC kernels chosen per batch size, round one process and two ranks apart
    # by more than the tolerance.
    cfg = dict(TINY, epochs=2, val_every=100, batch_size=4, seed=3, optimizer="sgd", lr=0.05,
               amp=False, channels_last=False)
    one = tmp_path / "one"
    train(load_config("fast", data=str(data_dir), **cfg), one, progress=False)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29533", "-m", "qsegment", "train", "--preset", "fast",
           "--out", str(two), "--data", str(data_dir),
           "--train-images", ",".join(cfg["train_images"]),
           "--val-images", ",".join(cfg["val_images"]),
           *[f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()
             if k not in ("train_images", "val_images", "amp", "channels_last")],
           "--no-amp", "--no-channels-last"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _weights(one / "last.safetensors"), _weights(two / "last.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-4), key
    # and a run with another seed differs: the comparison can fail
    other = tmp_path / "other"
    train(load_config("fast", data=str(data_dir), **dict(cfg, seed=4)), other, progress=False)
    c = _weights(other / "last.safetensors")
    assert any(not torch.allclose(a[k], c[k], rtol=1e-3, atol=1e-4) for k in a)


def test_evaluate_writes_table_metrics_and_figures(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    train(load_config("fast", data=str(data_dir), **dict(TINY, epochs=1)), out, progress=False)
    ev = tmp_path / "eval"
    assert main(["evaluate", str(out), "--data", str(data_dir), "--size", "336",
                 "--out", str(ev)]) == 0
    text = capsys.readouterr().out
    assert "| qsegment @ full |" in text and "| qsegment @ 336x336 |" in text
    assert "| second observer vs first |" in text
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["val_images"] == [f"Image_{i:02d}{e}" for i in range(11, 15) for e in "LR"]
    human = metrics["second_observer"]["pooled"]
    assert 0.7 < human["dice"] < 0.85 and human["acc"] > 0.95
    for name in ("predictions_full.png", "predictions_336.png", "roc.png"):
        assert (ev / name).stat().st_size > 10_000, name


def test_evaluate_with_tta_chooses_its_threshold_on_training_images(data_dir, tmp_path,
                                                                    capsys):
    model, card = load_model("qsegment-nearest")
    split = Split(("Image_01L",), ("Image_11L",))
    plain, flip = (table_iv(model, card, str(data_dir), split=split, figures=False,
                            progress=False, tta=tta) for tta in ("none", "flip"))
    assert plain["threshold"] == card["threshold"]["value"] and plain["tta"] == "none"
    assert flip["threshold"] == train_threshold(model, [load_sample(data_dir, "Image_01L")],
                                                tta="flip")
    assert "flip" in flip["threshold_rule"] and flip["threshold"] != plain["threshold"]
    (label, row), = flip["rows"].items()
    assert label == "qsegment-nearest @ full + flip TTA" and row["pooled"]["dice"] > 0.78
    assert row["pooled"]["auc"] != next(iter(plain["rows"].values()))["pooled"]["auc"]
    int8_file = tmp_path / "model.onnx"
    int8_file.write_bytes(b"")
    assert main(["evaluate", str(int8_file), "--tta", "flip"]) == 2
    assert "--tta applies to float checkpoints" in capsys.readouterr().err


def test_paper_preset_runs_on_full_resolution_images_with_mixed_precision(tmp_path, data_dir,
                                                                          monkeypatch):
    """The paper's recipe unchanged but for its length (bf16 autocast on an AVX-512 CPU,
    fp16 on CUDA, fp32 where half precision is slower): the training forward passes
    really compute in that type, on whole padded images."""
    seen = []

    def recording(name, **kwargs):
        model = create_model(name, **kwargs)
        model.register_forward_hook(
            lambda module, inputs, output: seen.append((module.training, output.dtype,
                                                        tuple(inputs[0].shape[-2:]))))
        return model

    monkeypatch.setattr(train_module, "create_model", recording)
    cfg = load_config("paper", data=str(data_dir), train_images=["Image_01L", "Image_02R"],
                      val_images=["Image_11L"], epochs=1, batch_size=2, threads=2)
    assert cfg.amp and cfg.crop == 0
    card = train(cfg, tmp_path / "paper", progress=False)
    assert card["epochs_done"] == 1
    assert card["config"]["optimizer"] == "sgd" and card["config"]["restart_epochs"] == 20
    training = [(dtype, shape) for is_training, dtype, shape in seen if is_training]
    expected = train_module.autocast_dtype(torch.device("cpu")) or torch.float32
    assert training == [(expected, (960, 1000))]  # one step of two whole images
    assert {dtype for is_training, dtype, _ in seen if not is_training} == {torch.float32}


def test_training_at_the_deployment_size(tmp_path, data_dir):
    """--resize trains on whole images scaled as a 128x128 camera would see them and
    validates at that size (scored against the full-size labels)."""
    cfg = load_config("fast", data=str(data_dir), **dict(TINY, epochs=1, resize=128))
    card = train(cfg, tmp_path / "small", progress=False)
    assert card["threshold"]["inference_size"] == 128
    model, _ = load_model(tmp_path / "small")
    val = [load_sample(data_dir, "Image_11L")]
    at_128 = score(predict_samples(model, val, 128), val)["pooled"]
    assert at_128 == pytest.approx(card["val_metrics"]["pooled"], abs=1e-5)  # NHWC rounding
    at_full = score(predict_samples(model, val), val)["pooled"]
    assert at_full["auc"] != pytest.approx(at_128["auc"], abs=1e-3)  # the sizes really differ


def test_qat_steps_through_the_int8_network_and_saves_the_architecture(tmp_path, data_dir,
                                                                      monkeypatch):
    """--qat trains the int8 export's network (fake quantization, the export's ranges):
    its weights go back into the architecture, each BatchNorm folded into its convolution
    (the same map, the BatchNorm the identity); the weights' ranges travel in the checkpoint,
    the activations' are calibrated again from the same start, and a resumed run ends as
    an unbroken one."""
    model, _ = load_model(resolve_checkpoint("qsegment-nearest"))
    x = to_input(load_sample(data_dir, "Image_11L").image[300:556, 300:556])
    observers = calibrate(model, x)
    graph = fake_quantized(model, observers)
    folded = copy.deepcopy(model)
    load_folded(folded, graph)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-3)
        assert (graph(x) - model(x)).abs().max() > 1e-3  # it does quantize
    norm = folded.encoder[0].conv3x3[1]
    assert torch.allclose(norm.running_var, torch.full_like(norm.running_var, 1 - norm.eps))

    monkeypatch.setattr(tflite, "calibration_inputs", lambda *_: x)  # one crop: fast
    cfg = dict(TINY, epochs=2, val_every=100, data=str(data_dir), init="qsegment-nearest",
               lr=0.001, qat=True)
    card = train(load_config("fast", **cfg), tmp_path / "whole", progress=False)
    assert card["config"]["qat"] is True
    split = tmp_path / "split"
    train(load_config("fast", max_minutes=1e-6, **cfg), split, progress=False)
    train(load_config("fast", threads=1), split, resume=True, progress=False)
    a, b = (read_checkpoint(run / "last.safetensors")[0] for run in (tmp_path / "whole", split))
    shipped = read_checkpoint(resolve_checkpoint("qsegment-nearest"))[0]
    assert not torch.allclose(a["model.head.weight"], shipped["model.head.weight"])
    assert len([k for k in a if k.startswith("qat._scale")]) > 20
    for key in (k for k in a if k.startswith(("model.", "qat."))):
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
