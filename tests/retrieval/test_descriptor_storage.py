"""Where PostgreSQL keeps the global descriptors: in the row, not in TOAST."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from retrieval.models import DescriptorAugmentation
from tests.factories import ImageDescriptorFactory

pytestmark = pytest.mark.django_db


def _unit(dim: int, seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _toast_rows(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = %s", [table])
        (toast,) = cursor.fetchone()
        cursor.execute(f"SELECT count(*) FROM {toast}")  # noqa: S608 - a name PostgreSQL gave
        return int(cursor.fetchone()[0])


def test_a_1280_d_descriptor_and_its_dba_row_stay_in_their_rows() -> None:
    """A 2.5 kB halfvec is above TOAST's 2 kB threshold: stored out of line by default,
    it would cost a shortlist read a TOAST lookup per row."""
    descriptor = ImageDescriptorFactory(embedding=_unit(1280, 0))
    DescriptorAugmentation.objects.create(
        descriptor=descriptor, embedding=_unit(1280, 1), neighbours=list(range(10)), similarities=[0.5] * 10
    )
    assert _toast_rows("retrieval_imagedescriptor") == 0
    assert _toast_rows("retrieval_descriptoraugmentation") == 0


def test_a_4000_d_dba_row_with_its_neighbour_lists_is_still_stored() -> None:
    """The widest descriptor the HNSW index takes does not fit a page with its lists:
    it goes out of line as a last resort instead of failing the write."""
    descriptor = ImageDescriptorFactory(embedding=_unit(4000, 2))
    neighbours = list(range(1, 11))
    DescriptorAugmentation.objects.create(
        descriptor=descriptor, embedding=_unit(4000, 3), neighbours=neighbours, similarities=[0.5] * 10
    )
    stored = DescriptorAugmentation.objects.get(descriptor=descriptor)
    assert len(stored.embedding) == 4000 and stored.neighbours == neighbours
