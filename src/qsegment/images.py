"""Reading the user's images: any file Pillow opens, any channel layout and bit depth."""

from __future__ import annotations

import errno
import io
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import QsegmentError


class ImageError(QsegmentError, ValueError):
    """An input that cannot be read as an image; the message names the file."""


def round_up(length: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` not below ``length``: the size a network with
    that total stride, or an aligned buffer, needs."""
    return -(-length // multiple) * multiple


def to_rgb_float(image: np.ndarray | Image.Image) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] from a PIL image or array: grayscale is repeated
    over the channels, alpha is dropped, 16-bit and float inputs are scaled."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float32)
            image = array / (65535.0 if image.mode.startswith("I;16") or array.max() > 255
                             else 255.0)
        elif image.mode == "F":
            image = np.asarray(image, dtype=np.float32)
        else:
            image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {array.shape}")
    if array.shape[2] in (1, 2):  # gray, gray + alpha
        array = np.repeat(array[..., :1], 3, axis=2)
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    array = array.astype(np.float32)
    if array.min() < 0 or array.max() > 1:
        raise ImageError("float images must lie in [0, 1]")
    return array


SAMPLE_IMAGES = Path(__file__).parent / "sample_images"  # two CHASE_DB1 test images (CC BY 4.0)
MAX_MEGAPIXELS = 100  # larger files are refused before decoding, never an out-of-memory kill
# How the PNGs a user gets are compressed (predict's files, the app's downloads): zlib
# level 1, with its run-length strategy. On a CHASE_DB1 map level 1 encoded the mask in 5
# ms against 20 ms at Pillow's default 6 (issue #35: predict's largest share outside the
# network); the run-length strategy takes no longer and makes the mask 43 % smaller (17
# against 30 kB), the probability and the overlay 17-18 % (Pillow 12.3, median of 7).
# Gray maps skip Pillow's row filters too (encode_gray_png).
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}


def encode_image(pixels: np.ndarray | Image.Image, format: str = "PNG") -> bytes:
    """uint8 pixels (or an image) as a PNG (fast, lossless: :data:`PNG_OPTIONS`) or a
    JPEG (quality 90: what the web app's page shows)."""
    buffer = io.BytesIO()
    options = PNG_OPTIONS if format == "PNG" else {"quality": 90}
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def encode_gray_png(pixels: np.ndarray) -> bytes:
    """An (H, W) uint8 map, or a boolean mask as 0 and 255, as an 8-bit grayscale PNG
    with its rows left unfiltered. Pillow filters every row of an 8-bit image, which
    these maps do not gain from: on a CHASE_DB1 image the mask takes 1.8 against 5.7 ms
    (15 against 45 ms at 3504x2336) and the probability 3.4 against 8.6 ms, each file a
    little smaller (issue #35). Any PNG reader reads it as Pillow's own."""
    height, width = pixels.shape
    rows = np.zeros((height, width + 1), np.uint8)  # each row: filter type 0, its pixels
    rows[:, 1:] = pixels
    if pixels.dtype == bool:
        rows[:, 1:] *= 255
    packer = zlib.compressobj(PNG_OPTIONS["compress_level"], zlib.DEFLATED, 15, 9,
                              PNG_OPTIONS["compress_type"])
    deflated = packer.compress(rows.data) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    # width, height, 8 bits, grayscale, deflate, adaptive filtering's set, no interlace
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes((8, 0, 0, 0, 0))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", deflated)
            + chunk(b"IEND", b""))


_EIGHT_BIT = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"}


def read_rgb(path: str | Path, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """Any image file Pillow understands as (H, W, 3) RGB: uint8 for 8-bit files (the
    int8 runtime's fast path takes them as they are), float32 in [0, 1] for 16-bit and
    float files. Files over ``max_megapixels`` are refused before decoding."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit
            with Image.open(path) as im:
                megapixels = im.width * im.height / 1e6
                if megapixels > max_megapixels:
                    raise ImageError(f"{path}: {im.width}x{im.height} is {megapixels:.0f} MP, "
                                     f"over the {max_megapixels:g} MP limit: downscale it first")
                im.load()  # decode fully: truncated files fail here
                if im.mode in _EIGHT_BIT:  # no copy for what is RGB already (most photographs)
                    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
                return to_rgb_float(im)
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: over the {max_megapixels:g} MP limit ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ImageError):
            raise
        raise ImageError(f"{path}: not a readable image ({err})") from err


def read_image(path: str | Path) -> np.ndarray:
    """Any image file Pillow understands as (H, W, 3) float32 RGB in [0, 1]."""
    return to_rgb_float(read_rgb(path))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".webp")


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files from paths, folders (their images, not recursive) and glob patterns;
    returns (files, [(input, problem)]) so one bad input does not stop the others."""
    import glob

    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            files += matches
            if not matches:
                problems.append((item, "no file matches this pattern"))
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir()
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            files += matches
            if not matches:
                problems.append((item, "folder holds no image files"))
        elif path.is_file():
            files.append(path)
        else:
            problems.append((item, _missing(path)))
    return files, problems


def _missing(path: Path) -> str:
    """Why ``path`` is not a file: a symbolic link that never ends, one that points
    nowhere, or nothing at all."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python 3.11 says "Symlink loop from ..."
            return "symlink loop (the link points back to itself)"
        except OSError as err:
            if err.errno == errno.ELOOP:
                return "symlink loop (the link points back to itself)"
        return f"broken symbolic link (to {os.readlink(path)})"
    return "no such file or folder"


def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 255, 0),
            alpha: float = 0.6) -> np.ndarray:
    """uint8 RGB: the image with vessel pixels blended towards ``colour``."""
    rgb = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
    out = rgb.copy()
    tint = np.asarray(colour, dtype=np.float32) / 255.0
    out[mask] = (1 - alpha) * rgb[mask] + alpha * tint
    return unit_to_uint8(out)


def unit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (a probability map, a float photograph) as bytes 0..255 (rounded
    half to even). In place on one clipped copy: a fresh map-sized array per step took
    1.2-1.4x the time."""
    scaled = np.clip(values, 0, 1)
    scaled *= 255
    return np.rint(scaled, out=scaled).astype(np.uint8)


# artery/vein class colours (0 background, 1 artery, 2 vein, 3 uncertain), as the
# artery/vein literature draws them: arteries red, veins blue, uncertain green
AV_COLOURS = np.array([[0, 0, 0], [230, 40, 40], [40, 90, 230], [60, 200, 60]], np.uint8)


def class_map(vessel: np.ndarray, class_scores: np.ndarray) -> np.ndarray:
    """(H, W) uint8 map of 0 background, 1 artery, 2 vein, 3 uncertain: on the ``vessel``
    mask, the likeliest class (ranked on the vessel pixels alone: a tenth of the image).
    ``class_scores`` (3, H, W) are the class logits, or any increasing function of them
    (a runtime's sigmoid: :meth:`~qsegment.runtimes.base.Runtime.outputs_uint8`)."""
    classes = np.zeros(vessel.shape, np.uint8)
    classes[vessel] = class_scores[:, vessel].argmax(0) + 1
    return classes


def artery_vein_colours(classes: np.ndarray) -> np.ndarray:
    """An (H, W) artery/vein class map as uint8 RGB (:data:`AV_COLOURS`)."""
    return AV_COLOURS[np.minimum(classes, len(AV_COLOURS) - 1)]


def artery_vein_image(classes: np.ndarray) -> Image.Image:
    """An (H, W) artery/vein class map as a palette image (``NAME_av.png``): its pixel
    values are the classes (``np.asarray(Image.open(path))`` reads them back), shown in
    :data:`AV_COLOURS` (``.convert("RGB")``). A third of an RGB PNG's encoding time."""
    image = Image.fromarray(np.minimum(classes, len(AV_COLOURS) - 1).astype(np.uint8))
    image.putpalette(AV_COLOURS.ravel().tolist())
    return image


def overlay_classes(image: np.ndarray, classes: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """uint8 RGB: the image with each vessel class blended towards its colour."""
    out = image
    for value in range(1, len(AV_COLOURS)):
        out = overlay(out, classes == value, tuple(AV_COLOURS[value]), alpha)
    return out


def resize_bilinear(x: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
    """(N, C, h, w) float32 resized to ``size`` (PyTorch's bilinear, corners not aligned):
    the one resampling of inputs (antialiased) and of output maps."""
    import torch
    import torch.nn.functional as F

    out = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", antialias=antialias,
                        align_corners=False)
    return out.numpy()


def bilinear_at(values: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) float32 ``values`` read at the pixels (``rows``, ``cols``) of the same
    picture at ``size`` (H, W): (C, N) float32, what :func:`resize_bilinear` without
    antialiasing gives there (pixel centres mapped, the source clamped at the top-left
    edge; to the rounding of a float32 source coordinate, which PyTorch may compute with
    a fused multiply-add), without PyTorch and without resizing the pixels nobody reads
    (a mask's are a tenth)."""
    (h, w), (height, width) = values.shape[1:], size
    if (h, w) == (height, width):
        return values[:, rows, cols]

    def taps(index: np.ndarray, inside: int, outside: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum(np.float32(inside / outside) * (index + np.float32(0.5))
                            - np.float32(0.5), np.float32(0))
        low = source.astype(np.intp)
        return low, np.minimum(low + 1, inside - 1), source - low.astype(np.float32)

    top, bottom, down = taps(rows.astype(np.float32), h, height)
    left, right, across = taps(cols.astype(np.float32), w, width)
    upper = values[:, top, left] * (1 - across) + values[:, top, right] * across
    lower = values[:, bottom, left] * (1 - across) + values[:, bottom, right] * across
    return upper * (1 - down) + lower * down


def network_input(image: np.ndarray, size: int | tuple[int, int] | None, multiple: int
                  ) -> tuple[np.ndarray, tuple[int, int]]:
    """(1, 3, H', W') float32 input of an (H, W, 3) image in [0, 1]: resized to ``size``
    (bilinear, antialiased) if given, zero-padded bottom/right to ``multiple``; with the
    size before padding."""
    x = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None])
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        x = resize_bilinear(x, (height, width), antialias=True)
    h, w = x.shape[-2:]
    padded = np.pad(x, ((0, 0), (0, 0), (0, (-h) % multiple), (0, (-w) % multiple)))
    return padded, (h, w)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 or float image resized to ``size`` (height, width) with Pillow's
    bilinear filter (antialiased when shrinking), its dtype kept; no PyTorch. An image of
    that size already is returned as it is (Pillow would copy it twice)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    channels = [resize_map(image[..., c], size) for c in range(image.shape[2])]
    return np.stack(channels, axis=-1)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W) float map (probabilities) resized to ``size`` (height, width), bilinear, as
    float32 (no copy where it is float32 of that size already)."""
    height, width = size
    if values.shape == (height, width):
        return values.astype(np.float32, copy=False)
    resized = Image.fromarray(values.astype(np.float32), mode="F").resize((width, height),
                                                                       Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)
