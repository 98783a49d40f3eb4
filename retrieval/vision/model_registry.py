"""Official DELG/DELF models: where to download them, how to run them, what is installed.

Installed models live in ``<MODEL_DIR>/installed/<name>/``::

    model.json      InstalledModel below: kind, source, checksums, extraction settings
    saved_model/    the SavedModel as published (saved_model.pb, variables/)
    pca/            optional local-descriptor PCA: mean.datum + pca_proj_mat.datum
                    (+ pca_vars.datum) as shipped with DELF, or one pca.npz

``manage.py fetch_model`` writes them (see ``retrieval.vision.model_fetch``). Reading
``model.json`` is cheap: ``check_spec`` uses it to accept ``delg:<name>`` and
``delf:<name>`` without loading TensorFlow. No Django here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

KINDS = ("delg", "delf")
METADATA_FILE = "model.json"
SAVED_MODEL_DIR = "saved_model"
PCA_DIR = "pca"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,59}$")

# The image pyramid of the official DELF/DELG configs (research/delf/delf/python/delg/
# r50delg_gldv2clean_config.pbtxt, examples/delf_config_example.pbtxt).
OFFICIAL_SCALES = (0.25, 0.35355338, 0.5, 0.70710677, 1.0, 1.4142135, 2.0)


@dataclasses.dataclass(frozen=True)
class ExtractionSettings:
    """How the official pipeline runs a model (the fields of its DelfConfig).

    Attributes:
        image_size: the photo is shrunk so that its longer side is at most this (never
            enlarged), like ``max_image_size``.
        image_scales: the pyramid of local features, relative to the shrunk photo.
        global_scales_ind: indices into ``image_scales`` for the global descriptor (DELG).
        score_threshold: minimum attention score of a local feature.
        pca_dim: keep this many PCA dimensions when PCA files are installed (DELF).
        use_whitening: divide by the PCA variances (needs ``pca_vars``).
    """

    image_size: int = 1024
    image_scales: tuple[float, ...] = OFFICIAL_SCALES
    global_scales_ind: tuple[int, ...] = (3, 4, 5)
    score_threshold: float = 100.0
    pca_dim: int = 40
    use_whitening: bool = False

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if not self.image_scales or any(s <= 0 for s in self.image_scales):
            raise ValueError(f"image_scales must be positive and non-empty, got {self.image_scales}")
        if any(not 0 <= i < len(self.image_scales) for i in self.global_scales_ind):
            raise ValueError(
                f"global_scales_ind {self.global_scales_ind} out of range of {len(self.image_scales)} scales"
            )
        if self.pca_dim < 1:
            raise ValueError(f"pca_dim must be positive, got {self.pca_dim}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractionSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown extraction settings {unknown}; known: {sorted(known)}")
        values = dict(data)
        for key in ("image_scales", "global_scales_ind"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class OfficialModel:
    """One archive published by tensorflow/models research/delf (README "Pre-trained models").

    ``sha256`` is None where no checksum is published or recorded here: such a download is
    refused unless the user passes the checksum they verified (``fetch_model --sha256``).
    """

    name: str
    kind: str
    url: str
    sha256: str | None
    description: str
    settings: ExtractionSettings


# Checksums: Google publishes none for these archives and they could not be downloaded
# where this registry was written, so none is recorded (never guessed). Settings follow
# the official configs named in each description.
OFFICIAL_MODELS: dict[str, OfficialModel] = {
    m.name: m
    for m in (
        OfficialModel(
            name="delg-r50-gldv2",
            kind="delg",
            url="https://storage.googleapis.com/delf/r50delg_gldv2clean_20200914.tar.gz",
            sha256=None,
            description="DELG ResNet-50, GLDv2-clean (r50delg_gldv2clean_config.pbtxt); 2048-d global, 128-d local",
            settings=ExtractionSettings(score_threshold=454.6),
        ),
        OfficialModel(
            name="delg-r101-gldv2",
            kind="delg",
            url="https://storage.googleapis.com/delf/r101delg_gldv2clean_20200914.tar.gz",
            sha256=None,
            description="DELG ResNet-101, GLDv2-clean (r101delg_gldv2clean_config.pbtxt); 2048-d global, 128-d local",
            settings=ExtractionSettings(score_threshold=357.48),
        ),
        OfficialModel(
            name="delf-gld",
            kind="delf",
            url="https://storage.googleapis.com/delf/delf_gld_20190411.tar.gz",
            sha256=None,
            description="DELF ResNet-50, GLDv1 (examples/delf_config_example.pbtxt, PCA to 40-d); local features only",
            settings=ExtractionSettings(score_threshold=100.0, pca_dim=40),
        ),
    )
}


class ModelNotInstalled(LookupError):
    """No installed model of that name and kind."""


@dataclasses.dataclass(frozen=True)
class InstalledModel:
    """The contents of ``installed/<name>/model.json``.

    Attributes:
        sha256: of the archive (or folder) it was installed from.
        model_sha256: of the installed SavedModel files (see ``model_fetch.tree_sha256``);
            it goes into the descriptors' model version, so replacing the model makes
            the rows it produced stale.
    """

    name: str
    kind: str
    source: str
    sha256: str
    model_sha256: str
    installed_at: str
    settings: ExtractionSettings
    directory: Path

    @property
    def saved_model_dir(self) -> Path:
        return self.directory / SAVED_MODEL_DIR

    @property
    def pca_dir(self) -> Path:
        return self.directory / PCA_DIR

    def to_json(self) -> str:
        record = {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "sha256": self.sha256,
            "model_sha256": self.model_sha256,
            "installed_at": self.installed_at,
            "settings": self.settings.to_dict(),
        }
        return json.dumps(record, indent=2) + "\n"


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1-60 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def installed_root(cache_dir: Path) -> Path:
    return Path(cache_dir) / "installed"


def read_installed(cache_dir: Path, name: str, *, kind: str | None = None) -> InstalledModel:
    """The installed model ``name`` (cheap: reads one small JSON file).

    Raises:
        ModelNotInstalled: missing, unreadable, or of another kind than ``kind``.
    """
    validate_name(name)
    directory = installed_root(cache_dir) / name
    try:
        record = json.loads((directory / METADATA_FILE).read_text())
        model = InstalledModel(
            name=record["name"],
            kind=record["kind"],
            source=record["source"],
            sha256=record["sha256"],
            model_sha256=record["model_sha256"],
            installed_at=record["installed_at"],
            settings=ExtractionSettings.from_dict(record.get("settings", {})),
            directory=directory,
        )
    except FileNotFoundError:
        raise ModelNotInstalled(
            f"model {name!r} is not installed in {directory.parent}; run `manage.py fetch_model {name}`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotInstalled(f"{directory / METADATA_FILE} is unreadable ({exc}); install {name!r} again") from None
    if kind is not None and model.kind != kind:
        raise ModelNotInstalled(f"installed model {name!r} is a {model.kind} model, not {kind}")
    return model


def list_installed(cache_dir: Path) -> list[InstalledModel]:
    root = installed_root(cache_dir)
    models = []
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.is_dir() and _NAME.match(child.name):
            try:
                models.append(read_installed(cache_dir, child.name))
            except ModelNotInstalled:
                continue
    return models
