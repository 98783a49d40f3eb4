"""Thumbnails: made once when an image is indexed, or from the stored photo on first
request; small upright JPEGs under a name derived from the row."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from PIL import Image

from retrieval import services
from retrieval.errors import InvalidImage
from retrieval.models import CatalogImage
from retrieval.services.thumbnails import THUMBNAIL_MAX_SIDE
from tests.conftest import encode, load_photo
from tests.factories import CatalogFactory

pytestmark = pytest.mark.django_db


def _ingest(data: bytes, name: str = "photo.jpg") -> CatalogImage:
    return services.image_ingest(catalog=CatalogFactory(), data=data, filename=name, enqueue=False).image


def _stored(name: str) -> Image.Image:
    with default_storage.open(name, "rb") as handle:
        image = Image.open(io.BytesIO(handle.read()))
        image.load()
    return image


def test_indexing_makes_a_small_jpeg_thumbnail_named_after_the_row(real_photos) -> None:
    image = _ingest(encode(real_photos["astronaut"]))  # 512x512
    services.image_index(image_id=image.pk)
    image.refresh_from_db()
    assert image.status == CatalogImage.Status.INDEXED
    assert image.thumbnail.name == services.thumbnail_name(image=image)
    assert image.thumbnail.name == f"thumbs/{image.catalog_id}/{image.sha256[:2]}/{image.sha256}.jpg"
    thumb = _stored(image.thumbnail.name)
    assert thumb.format == "JPEG" and thumb.size == (THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE)


def test_the_thumbnail_of_a_photo_indexed_before_thumbnails_is_made_on_demand_once(real_photos) -> None:
    image = _ingest(encode(real_photos["chelsea"]))  # 451x300
    assert not image.thumbnail.name
    name = services.thumbnail_ensure(image=image)
    assert CatalogImage.objects.get(pk=image.pk).thumbnail.name == name
    assert _stored(name).size == (451, 300)  # never enlarged
    default_storage.delete(image.file.name)  # the second call reads the stored thumbnail, not the photo
    assert services.thumbnail_ensure(image=CatalogImage.objects.get(pk=image.pk)) == name


def test_an_exif_rotated_photo_gets_an_upright_thumbnail() -> None:
    pixels = load_photo("chelsea.png")  # 451 wide, 300 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image = _ingest(encode(Image.fromarray(pixels), exif=exif))
    assert (image.width, image.height) == (300, 451)
    thumb = _stored(services.thumbnail_ensure(image=image))
    assert thumb.size == (300, 451)


def test_a_large_jpeg_is_reduced_to_the_thumbnail_size() -> None:
    rng = np.random.default_rng(0)
    big = np.kron(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), np.ones((40, 40, 1), np.uint8))  # 3200x2400
    image = _ingest(encode(big, quality=70))
    thumb = _stored(services.thumbnail_ensure(image=image))
    assert thumb.size == (THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE * 3 // 4)


def test_a_transparent_png_thumbnail_is_composited_on_white() -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent black
    image = _ingest(encode(rgba, "PNG"), "t.png")
    thumb = _stored(services.thumbnail_ensure(image=image))
    assert np.asarray(thumb).min() > 240


def test_a_thumbnail_left_over_at_the_name_is_replaced_not_renamed(real_photos) -> None:
    image = _ingest(encode(real_photos["coffee"]))
    name = services.thumbnail_name(image=image)
    default_storage.save(name, io.BytesIO(b"stale bytes"))
    assert services.thumbnail_ensure(image=image) == name
    assert _stored(name).format == "JPEG"


def test_a_missing_or_corrupt_photo_gives_a_clear_error(real_photos) -> None:
    image = _ingest(encode(real_photos["coffee"]))
    with default_storage.open(image.file.name, "wb") as handle:
        handle.write(encode(real_photos["coffee"])[:300])  # truncated
    with pytest.raises(InvalidImage, match="cannot be decoded"):
        services.thumbnail_ensure(image=image)
    default_storage.delete(image.file.name)
    with pytest.raises(InvalidImage, match="missing"):
        services.thumbnail_ensure(image=image)
