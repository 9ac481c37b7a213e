"""Decode: image bytes into fixed-size RGB arrays.

Pure functions (no Spark, no TensorFlow) so that every rule here is tested on its own. A file that cannot be
used raises :class:`ImageRejected` with a short reason; callers record it and go on.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# Truncated files must never pass as good images (Pillow's default; restated because a stray import elsewhere
# could flip this global).
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Refuse decompression bombs from the header alone: 50 megapixels is far above any fruit photo.
DEFAULT_MAX_PIXELS = 50_000_000

# EXIF's Orientation tag and the transposition that shows the image upright, as viewers (and Pillow's
# ImageOps.exif_transpose) apply it: a phone photo stored sideways is featurized as it is seen.
_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageRejected(ValueError):
    """An input file that cannot be featurized; ``reason`` is what goes into rejected.csv."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white (Fruits-360's background)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale the real range down to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        top = float(array.max()) or 1.0
        grey = np.clip(array * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(array.min()), float(array.max())
        grey = ((array - low) * (255.0 / (high - low or 1.0))).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _orientation(image: Image.Image) -> int:
    """The EXIF Orientation of a loaded image (1, upright, when absent or unreadable: viewers ignore it then)."""
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: Pillow's parsers raise assorted errors
        return 1
    return value if isinstance(value, int) else 1


def decode_image(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG bytes into a ``(size, size, 3)`` uint8 RGB array, upright.

    Any mode (L, P, RGBA, CMYK, 16-bit, ...) becomes RGB; images are resized (bilinear) to a square of ``size``
    unless already that size; an EXIF Orientation is applied as viewers apply it, to the small square (the
    same pixels as transposing first, at a fraction of the work). Raises :class:`ImageRejected` for empty,
    non-image, truncated, corrupt or oversized input.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns before its own DecompressionBombError; our pixel limit below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # header only: nothing decoded yet
            if width * height > max_pixels:
                raise ImageRejected(f"too large: {width}x{height} pixels exceeds the limit of {max_pixels}")
            if image.format not in ("JPEG", "PNG", "MPO"):
                raise ImageRejected(f"unsupported image format {image.format}")
            if image.format in ("JPEG", "MPO") and min(width, height) >= 2 * size:
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: much less work for big photos.
                image.draft("RGB", (size, size))
            image.load()
            upright = _UPRIGHT.get(_orientation(image))
            rgb = _to_rgb(image)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            if upright is not None:
                rgb = rgb.transpose(upright)
            return np.asarray(rgb, dtype=np.uint8)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"too large: {error}") from None
    except OSError as error:
        # Pillow raises OSError for truncated and corrupt streams ("image file is truncated", "broken data").
        raise ImageRejected(f"corrupt image: {error}") from None
    except (ValueError, SyntaxError, TypeError, IndexError, EOFError, MemoryError) as error:
        # Malformed headers surface as assorted exceptions inside Pillow's plugins.
        raise ImageRejected(f"corrupt image: {type(error).__name__}: {error}") from None
