"""factory_boy factories for the retrieval models."""

from __future__ import annotations

import dataclasses
import hashlib

import factory
import numpy as np
from django.core.files.base import ContentFile

from retrieval.models import Catalog, CatalogImage, FeatureModel, ImageDescriptor, Landmark
from retrieval.vision.features import LocalFeatures


class CatalogFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Catalog
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"catalog-{n}")


class LandmarkFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Landmark

    catalog = factory.SubFactory(CatalogFactory)
    name = factory.Sequence(lambda n: f"landmark-{n}")


class FeatureModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FeatureModel
        django_get_or_create = ("name", "version")

    name = "test-model"
    version = factory.Sequence(lambda n: f"v{n}")
    global_dim = 8
    local_dim = 4


class CatalogImageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CatalogImage

    catalog = factory.SubFactory(CatalogFactory)
    sha256 = factory.Sequence(lambda n: hashlib.sha256(str(n).encode()).hexdigest())
    file = factory.LazyAttribute(lambda o: ContentFile(b"not used", name=f"{o.sha256}.jpg"))
    width = 640
    height = 480
    status = CatalogImage.Status.INDEXED


class ImageDescriptorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ImageDescriptor

    image = factory.SubFactory(CatalogImageFactory)
    catalog = factory.SelfAttribute("image.catalog")
    model = factory.SubFactory(FeatureModelFactory)
    embedding = factory.LazyFunction(lambda: _unit(np.random.default_rng().normal(size=8)))
    local_features = factory.LazyFunction(lambda: LocalFeatures.empty(4).to_bytes())
    num_local = 0


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What ``services.feature_model_ensure`` reads of an extractor: its identity and
    dimensions (tests that need a FeatureModel row and its HNSW index, no network)."""

    model_name: str
    model_version: str = "1"
    global_dim: int = 8
    local_dim: int = 4


def feature_model_with_index(name: str, **dimensions: int) -> FeatureModel:
    """A FeatureModel row with its partial HNSW index, as the workers create them."""
    from retrieval.services import feature_model_ensure

    return feature_model_ensure(extractor=ModelIdentity(name, **dimensions))  # type: ignore[arg-type]
