"""``qsegment camera``: vessel maps live on the Raspberry Pi AI Camera (Sony IMX500).

The network runs inside the sensor; the Pi only receives its output tensor with
each frame's metadata. picamera2's IMX500 helper loads ``network.rpk`` (made by
``imx500-package`` from the export's ``packerOut.zip``), and for every frame this
app decodes the tensor to logits, thresholds the sigmoid, tints the vessels on the
preview inside the region the sensor saw, and prints the in-sensor DNN runtime
(the camera's KPI metadata) and the frame rate. With a tiling plan
(:mod:`qsegment.deploy.tiling`, ``qsegment camera --tiles K``) the app moves the
inference region over the plan's tiles, one per frame, and overlays the stitched map.

Everything but :func:`run_camera` is pure and tested on real outputs of the
quantized model; picamera2 exists only on the Pi and is imported inside it.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import QsegmentError, UsageError
from ..files import atomic_write
from ..images import (
    artery_vein_image,
    class_map,
    encode_gray_png,
    encode_image,
    overlay,
    overlay_classes,
)
from ..runtimes.base import depth_to_space, output_probabilities
from .tiling import DEFAULT_HALO, Roi, TileCycler, TilePlan, plan_tiles

SENSOR_FRAME = (3040, 4056)  # (height, width): the IMX500's pixel array, in which
# picamera2's IMX500.set_inference_roi_abs((x, y, width, height)) counts


class CameraError(QsegmentError, RuntimeError):
    """The camera app cannot start (no network file, no picamera2); says what to do."""


def decode_output(outputs: list[np.ndarray] | np.ndarray, size: int | None = None,
                  transpose: bool = False, phases: int = 1, channels: int = 1) -> np.ndarray:
    """(H, W) float32 logits from the IMX500's output tensor(s); (C, H, W) for a network
    with ``channels`` > 1 outputs (deploy.json's ``output.outputs``: ``qsegment-imx-av``'s
    vessel, artery, vein and uncertain).

    picamera2 returns a list of float arrays (already de-quantized), with or without a
    batch axis and with the single channel first or last; a flat vector of ``size**2``
    values is also accepted. ``transpose`` swaps H and W (for a column-major read).
    ``phases`` > 1 (deploy.json's ``output_phases``, ``qsegment-imx``): the tensor holds
    phases**2 sub-maps of size/phases per output, channels first or last, interleaved here.
    """
    tensor = np.asarray(outputs[0] if isinstance(outputs, list | tuple) else outputs,
                        dtype=np.float32)
    if phases > 1 or channels > 1:
        maps = _maps(tensor, size, phases, channels)
        full = depth_to_space(maps[None], phases)[0] if phases > 1 else maps
        full = full.transpose(0, 2, 1) if transpose else full
        return full[0] if channels == 1 else full
    if tensor.ndim == 1 and size is not None and tensor.size == size * size:
        tensor = tensor.reshape(size, size)
    squeezed = tensor.squeeze()
    if squeezed.ndim != 2 or (size is not None and squeezed.shape != (size, size)):
        expected = f"{size}x{size} values" if size else "one 2-D map"
        raise CameraError(f"cannot read an output tensor of shape {tensor.shape} as a vessel "
                         f"map (expected {expected}, optionally with batch/channel axes of 1)")
    return squeezed.T if transpose else squeezed


def _maps(tensor: np.ndarray, size: int | None, phases: int, channels: int) -> np.ndarray:
    """The (channels * phases**2, side, side) maps of an output tensor, channels first."""
    count = channels * phases * phases
    squeezed = tensor.reshape(tensor.shape[-3:]) if tensor.ndim == 4 else tensor
    if squeezed.ndim == 3 and squeezed.shape[-1] == count and squeezed.shape[0] != count:
        squeezed = squeezed.transpose(2, 0, 1)  # channels last
    side = None if size is None else size // phases
    if (squeezed.ndim != 3 or squeezed.shape[0] != count
            or (side is not None and squeezed.shape[1:] != (side, side))):
        expected = f"{count}x{side}x{side}" if side else f"{count} maps"
        what = "a vessel map" if channels == 1 else f"{channels} maps"
        raise CameraError(f"cannot read an output tensor of shape {tensor.shape} as "
                         f"{phases}x{phases} phases of {what} (expected {expected})")
    return squeezed


probability = output_probabilities  # the network outputs logits, never probabilities


def vessel_mask(logits: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean vessel map: sigmoid(logit) >= the model's train-chosen threshold."""
    return probability(logits) >= threshold


def shown_map(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """What the preview tints: the vessel mask (bool) of a vessel map, or of an
    artery/vein model's maps the uint8 class map on that mask (1 artery, 2 vein, 3
    uncertain; :func:`qsegment.images.class_map`)."""
    if probabilities.ndim == 2:
        return probabilities >= threshold
    return class_map(probabilities[0] >= threshold, probabilities[1:])


def overlay_in_roi(frame: np.ndarray, mask: np.ndarray, roi: tuple[int, int, int, int],
                   colour: tuple[int, int, int] = (0, 255, 0), alpha: float = 0.6
                   ) -> np.ndarray:
    """uint8 RGB copy of ``frame`` with the mask (scaled, nearest) tinted inside ``roi``
    (x, y, width, height: where the network's input lies in the frame); the region is
    clipped to the frame. A uint8 class map (:func:`shown_map` of an artery/vein model)
    is tinted by class (:data:`qsegment.images.AV_COLOURS`)."""
    x, y, w, h = (int(v) for v in roi)
    if w <= 0 or h <= 0:
        raise UsageError(f"empty region of interest {roi}")
    out = np.array(frame[..., :3], dtype=np.uint8, copy=True)
    classes = mask.dtype == np.uint8
    scaled = np.asarray(Image.fromarray(mask if classes else mask.astype(np.uint8) * 255)
                        .resize((w, h), Image.Resampling.NEAREST))
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, out.shape[1]), min(y + h, out.shape[0])
    if x1 <= x0 or y1 <= y0:
        return out
    region, seen = scaled[y0 - y:y1 - y, x0 - x:x1 - x], out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = (overlay_classes(seen, region, alpha) if classes
                         else overlay(seen, region > 0, colour, alpha))
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
        raise CameraError(f"{path}: no deploy.json (written by `qsegment export`)")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CameraError(f"{path}: not a readable deploy.json ({err})") from err
    if not isinstance(info, dict):
        raise CameraError(f"{path}: not a deploy.json (expected a JSON object)")
    return info


def centred_square(frame: tuple[int, int] = SENSOR_FRAME) -> Roi:
    """The centred square of a (height, width) frame: the region picamera2's
    ``set_auto_aspect_ratio()`` gives a square network, the whole-fundus view."""
    height, width = frame
    side = min(frame)
    return (width - side) // 2, (height - side) // 2, side, side


def tiling_plan(info: dict, tiles: int, fov: Roi | None = None, halo: int = DEFAULT_HALO,
                frame: tuple[int, int] = SENSOR_FRAME) -> TilePlan:
    """The tiling plan for ``qsegment camera --tiles K``, checked before the camera opens.

    ``info`` is the export's ``deploy.json``: its ``size`` is the network input the plan
    is made for, so it must be there and agree with the input and output shapes (one
    NxN map per tile) and the memory report. ``fov`` (sensor pixels) defaults to the
    centred square of the sensor, the single-ROI view. Raises :class:`CameraError`
    saying what is wrong.
    """
    if not info:
        raise CameraError("tiling needs the network's input size before the camera starts: "
                          "pass --info deploy.json (written by `qsegment export`)")
    size = info.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise CameraError(f"deploy.json has no valid network input size (size: {size!r}): "
                          "re-run `qsegment export`")
    phases = info.get("output_phases", 1)
    if not isinstance(phases, int) or phases < 1 or size % phases:
        raise CameraError(f"deploy.json is inconsistent: output_phases {phases!r} for size "
                          f"{size}; re-run `qsegment export`")
    channels = len((info.get("output") or {}).get("outputs", ["vessel"]))
    expected = {"input": [1, 3, size, size],
                "output": [1, channels * phases * phases, size // phases, size // phases]}
    for key, shape in expected.items():
        found = (info.get(key) or {}).get("shape")
        if found is not None and list(found) != shape:
            raise CameraError(f"deploy.json is inconsistent: size {size} but {key} shape "
                              f"{found} (tiling needs {shape}); re-run `qsegment export`")
    reported = (info.get("memory") or {}).get("size", size)
    if reported != size:
        raise CameraError(f"deploy.json is inconsistent: size {size} but the memory report "
                          f"is for {reported}x{reported}; re-run `qsegment export`")
    try:
        return plan_tiles(frame, size, tiles, fov or centred_square(frame), halo)
    except UsageError as err:
        raise CameraError(f"cannot tile the sensor for the {size}x{size} network: {err}"
                          ) from err


def require_input_size(input_size: tuple[int, int], plan: TilePlan) -> None:
    """Refuse a network file whose input (picamera2's ``get_input_size()``, width and
    height) is not the size the plan was made for (deploy.json's)."""
    if tuple(input_size) != (plan.size, plan.size):
        raise CameraError(f"the network file takes {input_size[0]}x{input_size[1]} inputs but "
                          f"deploy.json (the tiling plan) says {plan.size}x{plan.size}: "
                          "pass the deploy.json of this network with --info")


def sensor_to_preview(rect: Roi, scaler_crop: Roi, preview_size: tuple[int, int]) -> Roi:
    """A rectangle in sensor pixels in the coordinates of a preview frame of
    ``preview_size`` (width, height) that shows the sensor's ``scaler_crop`` (the
    frame's ``ScalerCrop`` metadata, sensor pixels), as picamera2 maps its own ROI."""
    x, y, w, h = rect
    cx, cy, cw, ch = scaler_crop
    sx, sy = preview_size[0] / cw, preview_size[1] / ch
    return (round((x - cx) * sx), round((y - cy) * sy), round(w * sx), round(h * sy))


def sensor_in_preview(plan: TilePlan, frame: np.ndarray, scaler_crop: Roi) -> Roi:
    """Where the whole sensor (a stitched map's extent) lies in the preview ``frame``."""
    height, width = frame.shape[:2]
    return sensor_to_preview((0, 0, plan.frame[1], plan.frame[0]), scaler_crop, (width, height))


def tiled_overlay(frame: np.ndarray, cycler: TileCycler, threshold: float,
                  scaler_crop: Roi) -> np.ndarray:
    """uint8 RGB copy of the preview ``frame`` with the stitched vessel map of every tile
    seen so far tinted where it lies; stitched at about the preview's scale, so that a
    frame costs little however many tiles the plan has."""
    height, width = frame.shape[:2]
    scale = max(width / scaler_crop[2], height / scaler_crop[3])
    mask = shown_map(cycler.stitched(scale).probability, threshold)
    return overlay_in_roi(frame, mask, sensor_in_preview(cycler.plan, frame, scaler_crop))


def region_photograph(frame: np.ndarray, region: Roi, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB: what ``region`` (x, y, width, height in the preview ``frame``'s pixels)
    shows, resized (bilinear) to ``size`` (height, width: the map's), black where the
    region leaves the frame. The photograph a saved map lies on, pixel for pixel."""
    x, y, w, h = (int(v) for v in region)
    if w <= 0 or h <= 0:
        raise UsageError(f"empty region of interest {region}")
    crop = np.zeros((h, w, 3), np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, frame.shape[1]), min(y + h, frame.shape[0])
    if x1 > x0 and y1 > y0:
        crop[y0 - y:y1 - y, x0 - x:x1 - x] = frame[y0:y1, x0:x1, :3]
    return np.asarray(Image.fromarray(crop).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def save_shot(folder: Path, index: int, preview: np.ndarray, frame: np.ndarray, region: Roi,
              shown: np.ndarray) -> list[Path]:
    """``--save``'s files for one frame, each written atomically: ``frame_N.png`` (the
    ``preview`` with its overlay), ``photo_N.png`` (the ``region`` of the untinted
    ``frame`` that the map covers, at the map's size) and the map beside it as
    ``predict`` writes maps (``photo_N_mask.png``, 0/255; an artery/vein model's
    ``photo_N_av.png``, the classes in a palette), so that ``qsegment analyze
    'DIR/photo_*_av.png' --photographs DIR`` measures what the sensor saw."""
    photo = f"photo_{index:06d}"
    classes = shown.dtype == np.uint8
    files = {f"frame_{index:06d}.png": encode_image(preview),
             f"{photo}.png": encode_image(region_photograph(frame, region, shown.shape)),
             f"{photo}_av.png" if classes else f"{photo}_mask.png":
                 encode_image(artery_vein_image(shown)) if classes else encode_gray_png(shown)}
    for name, data in files.items():
        atomic_write(folder / name, data)
    return [folder / name for name in files]


class TiledPreview:
    """The per-frame work of ``qsegment camera --tiles``: credit each output to its tile
    (:class:`TileCycler`), move the inference region with ``set_roi`` (picamera2's
    ``IMX500.set_inference_roi_abs``) and overlay the stitched map on the preview."""

    def __init__(self, plan: TilePlan, threshold: float, set_roi: Callable[[Roi], None],
                 settle_frames: int = 0) -> None:
        self.cycler = TileCycler(plan, settle_frames)
        self.threshold = threshold
        self.set_roi = set_roi

    def start(self) -> None:
        """Point the sensor at the first tile (instead of the centred square)."""
        self.set_roi(self.cycler.roi)

    def show(self, frame: np.ndarray, logits: np.ndarray, scaler_crop: Roi) -> np.ndarray:
        """The preview with the stitched map, after crediting this frame's ``logits``."""
        roi = self.cycler.add(probability(logits))
        if roi is not None:
            self.set_roi(roi)
        return tiled_overlay(frame, self.cycler, self.threshold, scaler_crop)

    def mask(self) -> np.ndarray:
        """The stitched vessel mask (or class map, :func:`shown_map`) at the network's
        sampling of the sensor (whole-sensor frame, empty outside the tiles seen so far)."""
        plan = self.cycler.plan
        return shown_map(self.cycler.stitched(plan.resize_factor).probability, self.threshold)


def _picamera2(rpk: Path) -> tuple:
    """picamera2's MappedArray, Picamera2 and IMX500, or a CameraError saying what is
    missing (the network file, or picamera2 off the Pi)."""
    if not rpk.is_file():
        raise CameraError(f"{rpk}: no such network file (make it with imx500-package)")
    try:
        from picamera2 import MappedArray, Picamera2
        from picamera2.devices import IMX500
    except ImportError as err:
        raise CameraError(f"picamera2 is not available ({err}): run this on a Raspberry Pi "
                          "with `sudo apt install python3-picamera2 imx500-all`") from err
    return MappedArray, Picamera2, IMX500


def run_camera(rpk: str | Path, threshold: float, size: int | None = None,
               save: Path | None = None, save_every: int = 30, seconds: float | None = None,
               preview: bool = True, transpose: bool = False, plan: TilePlan | None = None,
               settle_frames: int = 0, phases: int = 1, channels: int = 1) -> int:
    """Stream the camera with the in-sensor vessel map overlaid until Ctrl-C (or
    ``seconds``); with ``save``, every ``save_every``-th frame, the photograph its map
    covers and the map are written there (:func:`save_shot`). With a tiling ``plan``
    (:func:`tiling_plan`), the inference region cycles over its tiles
    (:class:`TiledPreview`) and the map shown and saved is the stitched one. ``phases``
    and ``channels``: deploy.json's ``output_phases`` and the number of its
    ``output.outputs`` (:func:`decode_output`; an artery/vein model's map is shown by
    class). Returns the number of frames with an output tensor."""
    MappedArray, Picamera2, IMX500 = _picamera2(Path(rpk))
    imx500 = IMX500(str(rpk))  # before Picamera2(): it uploads the network firmware
    if plan is not None:
        require_input_size(imx500.get_input_size(), plan)
    size = size or imx500.get_input_size()[0]
    tiled = (None if plan is None else
             TiledPreview(plan, threshold, imx500.set_inference_roi_abs, settle_frames))
    picam2 = Picamera2(imx500.camera_num)
    config = picam2.create_preview_configuration(main={"format": "XBGR8888"}, buffer_count=12)
    meter, frames = FrameRate(), [0]
    if save is not None:
        Path(save).mkdir(parents=True, exist_ok=True)

    def on_request(request: Any) -> None:  # picamera2's CompletedRequest
        metadata = request.get_metadata()
        outputs = imx500.get_outputs(metadata)
        if outputs is None:
            return
        logits = decode_output(outputs, size, transpose, phases, channels)
        frames[0] += 1
        with MappedArray(request, "main") as m:
            if tiled is None:
                mask = shown_map(probability(logits), threshold)
                region = imx500.get_roi_scaled(request)
                shown = overlay_in_roi(m.array, mask, region)
            else:
                shown = tiled.show(m.array, logits, metadata["ScalerCrop"])
            if save is not None and frames[0] % save_every == 0:  # before the tint lands
                if tiled is not None:
                    mask = tiled.mask()
                    region = sensor_in_preview(tiled.cycler.plan, m.array,
                                               metadata["ScalerCrop"])
                save_shot(Path(save), frames[0], shown, m.array, region, mask)
            m.array[..., :3] = shown
        status = status_text(meter.tick(time.monotonic()), imx500.get_kpi_info(metadata))
        print(status if tiled is None else f"{status} | {tiled.cycler.status()}", end="\r",
              flush=True)

    imx500.show_network_fw_progress_bar()
    picam2.pre_callback = on_request
    picam2.start(config, show_preview=preview)
    if tiled is None:
        imx500.set_auto_aspect_ratio()
    else:
        tiled.start()
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
