"""``qsegment camera``: vessel maps live on the Raspberry Pi AI Camera (Sony IMX500).

The network runs inside the sensor; the Pi only receives its output tensor with
each frame's metadata. picamera2's IMX500 helper loads ``network.rpk`` (made by
``imx500-package`` from the export's ``packerOut.zip``), and for every frame this
app decodes the tensor to logits, thresholds the sigmoid, tints the vessels on the
preview inside the region the sensor saw, and prints the in-sensor DNN runtime
(the camera's KPI metadata) and the frame rate.

Everything but :func:`run_camera` is pure and tested on real outputs of the
quantized model; picamera2 exists only on the Pi and is imported inside it.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import QsegmentError
from ..files import atomic_write
from ..images import overlay
from ..runtimes.base import sigmoid


class CameraError(QsegmentError, RuntimeError):
    """The camera app cannot start (no network file, no picamera2); says what to do."""


def decode_output(outputs: list[np.ndarray] | np.ndarray, size: int | None = None,
                  transpose: bool = False) -> np.ndarray:
    """(H, W) float32 logits from the IMX500's output tensor(s).

    picamera2 returns a list of float arrays (already de-quantized), with or without a
    batch axis and with the single channel first or last; a flat vector of ``size**2``
    values is also accepted. ``transpose`` swaps H and W (for a column-major read).
    """
    tensor = np.asarray(outputs[0] if isinstance(outputs, list | tuple) else outputs,
                        dtype=np.float32)
    if tensor.ndim == 1 and size is not None and tensor.size == size * size:
        tensor = tensor.reshape(size, size)
    squeezed = tensor.squeeze()
    if squeezed.ndim != 2 or (size is not None and squeezed.shape != (size, size)):
        expected = f"{size}x{size} values" if size else "one 2-D map"
        raise ValueError(f"cannot read an output tensor of shape {tensor.shape} as a vessel "
                         f"map (expected {expected}, optionally with batch/channel axes of 1)")
    return squeezed.T if transpose else squeezed


probability = sigmoid  # the network outputs logits, never probabilities


def vessel_mask(logits: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean vessel map: sigmoid(logit) >= the model's train-chosen threshold."""
    return probability(logits) >= threshold


def overlay_in_roi(frame: np.ndarray, mask: np.ndarray, roi: tuple[int, int, int, int],
                   colour: tuple[int, int, int] = (0, 255, 0), alpha: float = 0.6
                   ) -> np.ndarray:
    """uint8 RGB copy of ``frame`` with the mask (scaled, nearest) tinted inside ``roi``
    (x, y, width, height: where the network's input lies in the frame); the region is
    clipped to the frame."""
    x, y, w, h = (int(v) for v in roi)
    if w <= 0 or h <= 0:
        raise ValueError(f"empty region of interest {roi}")
    out = np.array(frame[..., :3], dtype=np.uint8, copy=True)
    scaled = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (w, h), Image.Resampling.NEAREST)) > 0
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, out.shape[1]), min(y + h, out.shape[0])
    if x1 <= x0 or y1 <= y0:
        return out
    region = scaled[y0 - y:y1 - y, x0 - x:x1 - x]
    out[y0:y1, x0:x1] = overlay(out[y0:y1, x0:x1], region, colour, alpha)
    return out


class FrameRate:
    """Frames per second over the last ``window`` frames (times are passed in)."""

    def __init__(self, window: int = 30) -> None:
        self.times: deque[float] = deque(maxlen=window)

    def tick(self, now: float) -> float | None:
        self.times.append(now)
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if len(self.times) > 1 and span > 0 else None


def status_text(fps: float | None, kpi: tuple[float, float] | None) -> str:
    """One status line: in-sensor DNN and DSP runtimes (from ``get_kpi_info``) and FPS."""
    parts = ["DNN -- ms" if kpi is None else f"DNN {kpi[0]:.1f} ms | DSP {kpi[1]:.1f} ms",
             "-- fps" if fps is None else f"{fps:.1f} fps"]
    return " | ".join(parts)


def read_deploy_info(path: str | Path) -> dict:
    """The export's ``deploy.json`` (size, threshold, normalisation)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no deploy.json (written by `qsegment export`)")
    return json.loads(path.read_text())


def _save(path: Path, array: np.ndarray) -> None:
    image = Image.fromarray(array)
    atomic_write(path, lambda p: image.save(p, format="PNG"))


def run_camera(rpk: str | Path, threshold: float, size: int | None = None,
               save: Path | None = None, save_every: int = 30, seconds: float | None = None,
               preview: bool = True, transpose: bool = False) -> int:
    """Stream the camera with the in-sensor vessel map overlaid until Ctrl-C (or
    ``seconds``); with ``save``, every ``save_every``-th frame and its map are written
    there. Returns the number of frames with an output tensor."""
    rpk = Path(rpk)
    if not rpk.is_file():
        raise CameraError(f"{rpk}: no such network file (make it with imx500-package)")
    try:
        from picamera2 import MappedArray, Picamera2
        from picamera2.devices import IMX500
    except ImportError as err:
        raise CameraError(f"picamera2 is not available ({err}): run this on a Raspberry Pi "
                          "with `sudo apt install python3-picamera2 imx500-all`") from err
    imx500 = IMX500(str(rpk))  # before Picamera2(): it uploads the network firmware
    size = size or imx500.get_input_size()[0]
    picam2 = Picamera2(imx500.camera_num)
    config = picam2.create_preview_configuration(main={"format": "XBGR8888"}, buffer_count=12)
    meter, frames = FrameRate(), [0]
    if save is not None:
        Path(save).mkdir(parents=True, exist_ok=True)

    def on_request(request: object) -> None:
        metadata = request.get_metadata()
        outputs = imx500.get_outputs(metadata)
        if outputs is None:
            return
        mask = vessel_mask(decode_output(outputs, size, transpose), threshold)
        with MappedArray(request, "main") as m:
            shown = overlay_in_roi(m.array, mask, imx500.get_roi_scaled(request))
            m.array[..., :3] = shown
        frames[0] += 1
        print(status_text(meter.tick(time.monotonic()), imx500.get_kpi_info(metadata)),
              end="\r", flush=True)
        if save is not None and frames[0] % save_every == 0:
            _save(Path(save) / f"frame_{frames[0]:06d}.png", shown)
            _save(Path(save) / f"mask_{frames[0]:06d}.png", mask.astype(np.uint8) * 255)

    imx500.show_network_fw_progress_bar()
    picam2.pre_callback = on_request
    picam2.start(config, show_preview=preview)
    imx500.set_auto_aspect_ratio()
    start = time.monotonic()
    try:
        while seconds is None or time.monotonic() - start < seconds:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        picam2.stop()
        print()
    return frames[0]
