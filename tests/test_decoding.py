"""Decoding and path rules, without Spark or TensorFlow."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fruits.decoding import (
    ImageRejected,
    decode_image,
)
from fruits.listing import is_supported


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def red_square(mode: str) -> Image.Image:
    return Image.new("RGB", (20, 20), (200, 10, 10)).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "CMYK", "1", "I;16", "I", "F"])
def test_every_mode_becomes_rgb_uint8_of_the_asked_size(mode):
    image = red_square(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG" if mode not in ("F", "I") else "TIFF"
    data = encode(image, fmt)
    if fmt == "TIFF":  # TIFF is not a supported format: these modes must be refused with a reason
        with pytest.raises(ImageRejected, match="unsupported image format TIFF"):
            decode_image(data, 32)
        return
    array = decode_image(data, 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8


def test_colour_survives_rgb_cmyk_and_palette():
    for mode, fmt in (("RGB", "PNG"), ("CMYK", "JPEG"), ("P", "PNG")):
        array = decode_image(encode(red_square(mode), fmt), 20)
        red, green, blue = array.reshape(-1, 3).mean(axis=0)
        assert red > 150 and green < 60 and blue < 60, mode


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64, dtype=np.uint16).reshape(64, 64)
    array = decode_image(encode(Image.frombytes("I;16", (64, 64), ramp.tobytes())), 64)
    # Clipping at 255 would make nearly every pixel white; scaling keeps the ramp.
    assert array[..., 0].min() < 10 and 100 < array[..., 0].mean() < 160


def test_transparent_pixels_become_white_background():
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    array = decode_image(encode(image), 10)
    assert (array == 255).all()


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    array = decode_image(encode(image, transparency=0), 8)
    assert (array == 255).all()


def test_resize_only_when_needed_and_exact_otherwise():
    pixels = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    same = decode_image(encode(Image.fromarray(pixels)), 24)
    assert np.array_equal(same, pixels)
    assert decode_image(encode(Image.fromarray(pixels)), 50).shape == (50, 50, 3)


def test_large_jpeg_uses_draft_and_still_gives_the_asked_size():
    big = Image.new("RGB", (1600, 1200), (10, 200, 10))
    array = decode_image(encode(big, "JPEG"), 100)
    assert array.shape == (100, 100, 3) and array[..., 1].mean() > 150


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"just some text", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "corrupt image|not an image"),
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected, match=reason):
        decode_image(data, 32)


def test_truncated_jpeg_and_png_are_rejected():
    pixels = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG"):
        data = encode(Image.fromarray(pixels), fmt)
        with pytest.raises(ImageRejected, match="corrupt image"):
            decode_image(data[: len(data) // 2], 32)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with one tiny IDAT: refused before any decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def test_huge_image_is_refused_from_its_header():
    with pytest.raises(ImageRejected, match=r"too large.*900000000 pixels"):
        decode_image(png_header_only(30000, 30000), 32)
    with pytest.raises(ImageRejected, match="too large"):
        decode_image(encode(Image.new("RGB", (200, 200))), 32, max_pixels=100 * 100)


def test_gif_is_refused_even_with_a_jpg_name():
    with pytest.raises(ImageRejected, match="unsupported image format GIF"):
        decode_image(encode(red_square("P"), "GIF"), 32)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_decoder(data):
    try:
        array = decode_image(data, 16)
    except ImageRejected as rejected:
        assert rejected.reason
    else:
        assert array.shape == (16, 16, 3)


@settings(max_examples=150, deadline=None)
@given(
    mode=st.sampled_from(["RGB", "L", "P", "RGBA", "CMYK", "1", "LA"]),
    fmt=st.sampled_from(["PNG", "JPEG"]),
    cut=st.floats(0.0, 1.0),
    flip=st.integers(0, 10_000),
)
def test_truncated_or_bit_flipped_images_never_crash(mode, fmt, cut, flip):
    image = red_square(mode)
    if (fmt == "JPEG" and mode in ("P", "RGBA", "LA", "1")) or (fmt == "PNG" and mode == "CMYK"):
        image = image.convert("RGB")
    data = bytearray(encode(image, fmt))
    data = data[: max(1, int(len(data) * cut))] if cut < 1 else data
    if flip < len(data) * 8:
        data[flip // 8] ^= 1 << (flip % 8)
    try:
        decode_image(bytes(data), 16)
    except ImageRejected as rejected:
        assert rejected.reason


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("a.jpg", True),
        ("a.JPEG", True),
        ("a.Png", True),
        ("a.gif", False),
        ("jpg", False),
        ("a.jpg.txt", False),
    ],
)
def test_supported_extensions_any_case(path, ok):
    assert is_supported(path) is ok


def sideways_photo(orientation: int, fmt: str = "JPEG") -> bytes:
    """A 64x32 image stored as a camera stores it (left half red, right half blue), with an EXIF Orientation."""
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (220, 20, 20)
    pixels[:, 32:] = (20, 20, 220)
    pixels[:8, :8] = (20, 220, 20)  # a green corner: every orientation looks different
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(
        Image.fromarray(pixels), fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {})
    )


def test_a_photo_stored_sideways_is_decoded_upright_as_viewers_show_it():
    """Orientation 6 ('rotate 90 degrees clockwise to view'): what a viewer shows has red on top, blue below."""
    upright = decode_image(sideways_photo(6), 16).astype(int)
    assert (upright[:6, :10, 0] > 150).all() and (upright[-6:, :, 2] > 150).all()
    assert (upright[:2, -3:, 1] > 150).all()  # the stored top-left corner, now at the top right
    stored = decode_image(sideways_photo(1), 16).astype(int)  # no rotation asked: as stored, red on the left
    assert (stored[6:, :6, 0] > 150).all() and (stored[:, -6:, 2] > 150).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_what_pillows_exif_transpose_gives(orientation, fmt):
    from PIL import ImageOps

    data = sideways_photo(orientation, fmt)
    viewer = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    expected = np.asarray(viewer.resize((24, 24), Image.Resampling.BILINEAR), dtype=int)
    # Transposed after the resize, not before: rounding may differ by a unit or two, never by a rotation.
    assert np.abs(decode_image(data, 24).astype(int) - expected).max() <= 3


def test_a_malformed_orientation_is_ignored_as_viewers_ignore_it():
    for value in (0, 9, 65535):
        assert decode_image(sideways_photo(value), 16).shape == (16, 16, 3)
