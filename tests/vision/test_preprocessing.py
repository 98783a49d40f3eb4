"""Every kind of bad or unusual upload either decodes correctly or raises a clear ImageError."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from retrieval.vision import preprocessing as pp
from tests.conftest import encode, load_photo


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_photo("chelsea.png")  # 451 x 300 RGB


def test_it_decodes_a_jpeg_to_rgb_uint8(photo: np.ndarray) -> None:
    out = pp.decode_image(encode(photo))
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - photo).mean() < 4


def test_it_refuses_an_empty_file() -> None:
    with pytest.raises(pp.EmptyImageError, match="empty"):
        pp.decode_image(b"")


def test_it_refuses_a_file_that_is_not_an_image() -> None:
    with pytest.raises(pp.NotAnImageError, match="not an image"):
        pp.decode_image(b"%PDF-1.4 this is a pdf, not a photo" * 10)


def test_it_refuses_a_truncated_jpeg(photo: np.ndarray) -> None:
    data = encode(photo)
    with pytest.raises(pp.CorruptImageError, match="truncated or corrupt"):
        pp.decode_image(data[: len(data) // 2])


def test_it_refuses_a_corrupt_png_body(photo: np.ndarray) -> None:
    data = bytearray(encode(photo, "PNG"))
    data[200:400] = b"\x00" * 200
    with pytest.raises(pp.CorruptImageError):
        pp.decode_image(bytes(data))


def test_it_refuses_a_decompression_bomb_before_decoding() -> None:
    # A 20000 x 20000 PNG compresses to ~50 kB; decoding it would take 1.2 GB.
    bomb = encode(Image.new("L", (20000, 20000)), "PNG")
    assert len(bomb) < 2_000_000
    with pytest.raises(pp.ImageTooLargeError, match="limit|pixels"):
        pp.decode_image(bomb, max_pixels=50_000_000)


def test_it_refuses_images_smaller_than_the_minimum_side() -> None:
    with pytest.raises(pp.ImageTooSmallError, match="at least 32"):
        pp.decode_image(encode(np.zeros((20, 200, 3), np.uint8), "PNG"), min_side=32)


def test_it_converts_grayscale_to_three_channels(photo: np.ndarray) -> None:
    gray = Image.fromarray(photo).convert("L")
    out = pp.decode_image(encode(gray, "PNG"))
    assert out.shape == (*photo.shape[:2], 3)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_it_converts_cmyk_to_rgb(photo: np.ndarray) -> None:
    cmyk = Image.fromarray(photo).convert("CMYK")
    out = pp.decode_image(encode(cmyk, "JPEG", quality=95))
    assert out.shape == photo.shape
    assert np.abs(out.astype(int) - photo).mean() < 12


def test_it_composites_alpha_on_white() -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 32:, 3] = 255
    out = pp.decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(out[10, 5]) == (255, 255, 255)
    assert tuple(out[10, 50]) == (255, 0, 0)


def test_it_scales_16_bit_images_to_8_bit() -> None:
    ramp = (np.linspace(0, 65535, 128 * 64).reshape(64, 128)).astype(np.uint16)
    image = Image.fromarray(ramp)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    out = pp.decode_image(buffer.getvalue())
    assert out.dtype == np.uint8 and out.shape == (64, 128, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_it_applies_exif_orientation(photo: np.ndarray) -> None:
    image = Image.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    out = pp.decode_image(encode(image, "JPEG", exif=exif, quality=95))
    assert out.shape == (photo.shape[1], photo.shape[0], 3)


def test_read_header_gives_size_and_format_without_decoding(photo: np.ndarray) -> None:
    data = encode(photo)
    header = pp.read_header(data[: len(data) // 2])  # truncated pixels: only decoding finds out
    assert header == pp.ImageHeader(width=451, height=300, format="JPEG")


def test_read_header_swaps_the_sides_for_a_rotating_exif_orientation(photo: np.ndarray) -> None:
    image = Image.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = 6
    header = pp.read_header(encode(image, "JPEG", exif=exif))
    assert (header.width, header.height) == (300, 451)


def test_read_header_refuses_an_image_over_the_pixel_cap_without_decoding() -> None:
    data = encode(Image.new("L", (7000, 7000)), "PNG")  # 49 megapixels in ~50 kB
    with pytest.raises(pp.ImageTooLargeError, match="the limit is 16,000,000"):
        pp.read_header(data, max_pixels=16_000_000)


@pytest.mark.parametrize(
    ("data", "error"),
    [(b"", pp.EmptyImageError), (b"not an image" * 20, pp.NotAnImageError)],
)
def test_read_header_refuses_what_decode_image_refuses_from_the_header(data: bytes, error: type) -> None:
    with pytest.raises(error):
        pp.read_header(data)


def test_read_header_refuses_images_smaller_than_the_minimum_side() -> None:
    with pytest.raises(pp.ImageTooSmallError, match="at least 32"):
        pp.read_header(encode(np.zeros((20, 200, 3), np.uint8), "PNG"), min_side=32)


def test_crop_bbox_returns_the_region_and_its_offset(photo: np.ndarray) -> None:
    crop, offset = pp.crop_bbox(photo, (10, 20, 110, 220))
    assert crop.shape == (200, 100, 3) and offset == (10, 20)


def test_crop_bbox_refuses_a_box_outside_the_image(photo: np.ndarray) -> None:
    with pytest.raises(pp.ImageError, match="does not overlap"):
        pp.crop_bbox(photo, (5000, 5000, 6000, 6000))


def test_crop_bbox_refuses_a_box_with_a_non_finite_coordinate(photo: np.ndarray) -> None:
    with pytest.raises(pp.ImageError, match="not a finite number"):
        pp.crop_bbox(photo, (0, 0, float("nan"), 100))


def test_resize_long_side_shrinks_and_enlarges_keeping_the_aspect() -> None:
    image = np.zeros((300, 600, 3), np.uint8)
    assert pp.resize_long_side(image, 1024).shape == (512, 1024, 3)
    assert pp.resize_long_side(image, 150).shape == (75, 150, 3)
    assert pp.resize_long_side(image, 600) is image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_the_header_names_the_decoded_format(photo: np.ndarray, fmt: str) -> None:
    assert pp.read_header(encode(photo, fmt)).format == fmt


@pytest.mark.parametrize("data", [b"<html><script>alert(1)</script></html>", b"P6 2 2 255 ............"])
def test_the_header_refuses_any_other_format(data: bytes) -> None:
    with pytest.raises(pp.NotAnImageError, match="supported format"):
        pp.read_header(data)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_it_reads_and_decodes_heic_and_avif(photo: np.ndarray, fmt: str) -> None:
    data = encode(photo, fmt, quality=90)
    assert pp.read_header(data) == pp.ImageHeader(width=451, height=300, format=fmt)
    out = pp.decode_image(data)
    assert out.shape == photo.shape and np.abs(out.astype(int) - photo).mean() < 4


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "JPEG"])
def test_an_exif_rotation_is_applied_once_to_heic_and_avif_as_to_jpeg(photo: np.ndarray, fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    data = encode(photo, fmt, quality=90, exif=exif.tobytes())
    header = pp.read_header(data)
    assert (header.width, header.height) == (300, 451)
    out = pp.decode_image(data)
    assert np.abs(out.astype(int) - np.rot90(photo, -1)).mean() < 4


def test_a_truncated_heic_is_refused_with_an_image_error(photo: np.ndarray) -> None:
    data = encode(photo, "HEIF")
    with pytest.raises(pp.CorruptImageError):
        pp.decode_image(data[: len(data) // 2])


def test_a_jpeg_rendition_is_upright_and_bounded(photo: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = pp.jpeg_rendition(encode(photo, "HEIF", exif=exif.tobytes()), max_pixels=10**6, max_side=200)
    rendition = Image.open(io.BytesIO(jpeg))
    assert rendition.format == "JPEG" and rendition.size == (133, 200)
    with pytest.raises(pp.ImageTooLargeError):
        pp.jpeg_rendition(encode(photo, "HEIF"), max_pixels=1000)


def _tiff_with_premultiplied_alpha(side: int = 40) -> bytes:
    """An uncompressed grey TIFF with associated (premultiplied) alpha, which Pillow opens
    in mode "La"; Pillow cannot write one."""
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 3, 1, side), (257, 3, 1, side), (258, 3, 2, 8 | 8 << 16), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 10 * 12 + 4), (277, 3, 1, 2), (278, 3, 1, side), (279, 4, 1, side * side * 2), (338, 3, 1, 1),
    ]  # fmt: skip
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *entry) for entry in entries)
    pixels = np.random.default_rng(0).integers(0, 255, (side, side, 2), dtype=np.uint8)
    pixels[..., 0] = np.minimum(pixels[..., 0], pixels[..., 1])  # premultiplied: grey <= alpha
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + pixels.tobytes()


def test_a_tiff_with_premultiplied_alpha_is_composited_on_white() -> None:
    data = _tiff_with_premultiplied_alpha()
    assert Image.open(io.BytesIO(data)).mode == "La"
    out = pp.decode_image(data)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8


def test_a_photo_whose_exif_block_cannot_be_rewritten_is_still_turned_upright(photo: np.ndarray) -> None:
    def ifd(entries: list[tuple[int, int, int, bytes]]) -> bytes:
        head = b"II*\x00" + struct.pack("<IH", 8, len(entries))
        return head + b"".join(struct.pack("<HHI", *entry[:3]) + entry[3] for entry in entries) + struct.pack("<I", 0)

    # XResolution written as the text "72" (some editors do), Orientation 6.
    exif = b"Exif\x00\x00" + ifd([(0x011A, 2, 4, b"72\x00\x00"), (0x0112, 3, 1, struct.pack("<HH", 6, 0))])
    data = encode(photo, "JPEG", quality=95, exif=exif)
    header = pp.read_header(data)
    out = pp.decode_image(data)
    assert (header.width, header.height) == (300, 451) and out.shape == (451, 300, 3)
    assert np.abs(out.astype(int) - np.rot90(photo, -1)).mean() < 4


def test_a_tiff_with_a_turning_orientation_reports_the_size_it_decodes_to(photo: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo, "TIFF", exif=exif.tobytes())
    header = pp.read_header(data)
    out = pp.decode_image(data)
    assert (header.width, header.height) == (out.shape[1], out.shape[0]) == (300, 451)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "HEIF", "AVIF"])
def test_a_file_with_any_damaged_header_byte_decodes_or_raises_an_image_error(fmt: str) -> None:
    small = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    data = encode(small, fmt)
    for offset in range(0, min(len(data), 400), 2):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        try:
            pp.read_header(bytes(damaged))
            pp.decode_image(bytes(damaged))
        except pp.ImageError:
            pass
