"""The official DELG and DELF SavedModels of tensorflow/models ``research/delf``.

Both kinds of export are run the way the official ``delf/python/extractor.py`` runs them:

- TF2 exports (``export_local_and_global_model.py``) have a ``serving_default``
  signature with inputs ``input_image`` (uint8 HxWx3), ``input_scales`` (float32 [S]),
  ``input_max_feature_num`` (int32), ``input_abs_thres`` (float32) and, for DELG,
  ``input_global_scales_ind`` (int32 [G]); outputs ``boxes``, ``features``, ``scales``,
  ``scores`` and ``global_descriptors``.
- TF1 exports (the published ``delf_gld_20190411`` and, per their official configs
  without ``is_tf2_exported``, the ``r50/r101delg_*`` archives) are pruned from the
  tensors ``input_image:0``, ``input_scales:0``, ``input_abs_thres:0``,
  ``input_max_feature_num:0`` (``input_global_scales_ind:0``) to ``boxes:0``,
  ``features:0``, ``scales:0``, ``scores:0`` (``global_descriptors:0``).

Pre/post-processing follows the official pipeline: the photo is shrunk (PIL bilinear)
so that its longer side is at most ``image_size``; boxes come back as
[y1, x1, y2, x2] in the pixels of that shrunk photo (the model already divides by each
pyramid scale), so keypoints are box centres divided by the per-axis resize factors,
then swapped to (x, y) original pixels. Local descriptors are L2-normalised, then
optionally PCA-projected (and whitened) and L2-normalised again. Global descriptors,
one row per selected scale, are each L2-normalised, summed and L2-normalised.

This module imports TensorFlow at the top; it is imported only when such a model is
built (``retrieval.vision.extractors.build_extractor``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from retrieval.vision.extractors.base import Extractor, LocalExtractor
from retrieval.vision.features import ImageFeatures, LocalFeatures
from retrieval.vision.model_registry import ExtractionSettings, InstalledModel

# Bump when anything here that changes descriptors changes.
CODE_VERSION = 1
# The official pipeline returns no features below this size (after resizing).
MIN_SIDE = 10

_LOCAL_INPUTS = ("input_image", "input_scales", "input_max_feature_num", "input_abs_thres")
_GLOBAL_INPUT = "input_global_scales_ind"
_LOCAL_OUTPUTS = ("boxes", "features", "scales", "scores")
_GLOBAL_OUTPUT = "global_descriptors"


class ModelFormatError(ValueError):
    """The SavedModel does not have the official DELG/DELF inputs and outputs."""


@dataclasses.dataclass(frozen=True)
class RawOutputs:
    """What the model returns for one (resized) photo.

    Attributes:
        boxes: (N, 4) float32 [y1, x1, y2, x2] in the input photo's pixels.
        features: (N, D) float32 raw local descriptors.
        scales: (N,) float32, 1 / pyramid scale of each feature.
        scores: (N,) float32 attention scores.
        global_descriptors: (G, E) float32, one row per selected scale (DELG), else None.
    """

    boxes: np.ndarray
    features: np.ndarray
    scales: np.ndarray
    scores: np.ndarray
    global_descriptors: np.ndarray | None


class SavedModelRunner:
    """Loads a DELG/DELF SavedModel and calls it with the official inputs."""

    def __init__(self, path: Path, *, with_global: bool) -> None:
        self.path = Path(path)
        self.with_global = with_global
        self._loaded = tf.saved_model.load(str(self.path))
        outputs = _LOCAL_OUTPUTS + ((_GLOBAL_OUTPUT,) if with_global else ())
        signature = getattr(self._loaded, "signatures", {}).get("serving_default")
        if signature is not None:
            inputs = set(signature.structured_input_signature[1])
            needed = set(_LOCAL_INPUTS) | ({_GLOBAL_INPUT} if with_global else set())
            allowed = set(_LOCAL_INPUTS) | {_GLOBAL_INPUT}
            if needed <= inputs <= allowed and set(outputs) <= set(signature.structured_outputs):
                self.mode = "signature"
                self._signature = signature
                self._signature_inputs = inputs
                return
        if hasattr(self._loaded, "prune"):  # a TF1 export: feed and fetch tensors by name
            feeds = ["input_image", "input_scales", "input_abs_thres", "input_max_feature_num"]
            feeds += [_GLOBAL_INPUT] if with_global else []
            try:
                self._pruned = self._loaded.prune(feeds=[f"{n}:0" for n in feeds], fetches=[f"{n}:0" for n in outputs])
            except (KeyError, ValueError) as exc:
                kind = "DELG" if with_global else "DELF"
                raise ModelFormatError(f"{self.path}: not an official {kind} graph: {exc}") from None
            self.mode = "graph"
            return
        raise ModelFormatError(
            f"{self.path}: no serving_default signature with inputs {', '.join(_LOCAL_INPUTS)}"
            f"{', ' + _GLOBAL_INPUT if with_global else ''} and outputs {', '.join(outputs)}"
        )

    def __call__(
        self,
        image: np.ndarray,
        *,
        image_scales: tuple[float, ...],
        max_feature_num: int,
        score_threshold: float,
        global_scales_ind: tuple[int, ...],
    ) -> RawOutputs:
        """Args: image (H, W, 3) uint8 RGB, already resized."""
        tensors = {
            "input_image": tf.convert_to_tensor(image, tf.uint8),
            "input_scales": tf.constant(image_scales, tf.float32),
            "input_max_feature_num": tf.constant(max_feature_num, tf.int32),
            "input_abs_thres": tf.constant(score_threshold, tf.float32),
            _GLOBAL_INPUT: tf.constant(global_scales_ind, tf.int32),
        }
        if self.mode == "signature":
            out = self._signature(**{k: v for k, v in tensors.items() if k in self._signature_inputs})
            values = {k: v.numpy() for k, v in out.items()}
        else:
            feeds = ["input_image", "input_scales", "input_abs_thres", "input_max_feature_num"]
            feeds += [_GLOBAL_INPUT] if self.with_global else []
            names = _LOCAL_OUTPUTS + ((_GLOBAL_OUTPUT,) if self.with_global else ())
            values = {n: v.numpy() for n, v in zip(names, self._pruned(*(tensors[f] for f in feeds)), strict=True)}
        boxes = np.asarray(values["boxes"], np.float32).reshape(-1, 4)
        n = boxes.shape[0]
        features = np.asarray(values["features"], np.float32)
        features = features.reshape(n, features.shape[-1]) if features.ndim != 2 else features
        global_descriptors = None
        if self.with_global:
            global_descriptors = np.asarray(values[_GLOBAL_OUTPUT], np.float32)
            global_descriptors = global_descriptors.reshape(-1, global_descriptors.shape[-1])
        return RawOutputs(
            boxes=boxes,
            features=features,
            scales=np.asarray(values["scales"], np.float32).reshape(n),
            scores=np.asarray(values["scores"], np.float32).reshape(n),  # official: (N, 1)
            global_descriptors=global_descriptors,
        )


# --- pre/post-processing (numpy) ------------------------------------------------------


def resize_for_model(image: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink like the official ``ResizeImage`` with ``max_image_size`` (never enlarge).

    Returns:
        The resized (h, w, 3) uint8 image and the factors (h / H, w / W) as float64 (2,).
    """
    height, width = image.shape[:2]
    largest = max(height, width)
    if largest <= max_side:
        return image, np.ones(2)
    factor = max_side / largest
    size = (int(round(width * factor)), int(round(height * factor)))  # PIL: (width, height)
    resized = np.asarray(Image.fromarray(image).resize(size, resample=Image.BILINEAR))
    return resized, np.array([size[1] / height, size[0] / width])


def boxes_to_keypoints(boxes: np.ndarray, scale_factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box centres and sizes in the original photo.

    Args:
        boxes: (N, 4) [y1, x1, y2, x2] in the resized photo's pixels.
        scale_factors: (2,) resized / original, for y and x.
    Returns:
        keypoints (N, 2) float32 (x, y) and sizes (N,) float32, both in original pixels.
    """
    factors = np.asarray(scale_factors, np.float64)
    centres_yx = (boxes[:, :2] + boxes[:, 2:]) / 2.0 / factors
    extents_yx = (boxes[:, 2:] - boxes[:, :2]) / factors
    return centres_yx[:, ::-1].astype(np.float32), extents_yx.mean(axis=1).astype(np.float32)


def l2_normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Pca:
    """``out = (x - mean) @ matrix[:dim].T`` (``/ sqrt(variances[:dim])`` when whitening).

    Attributes:
        mean: (D,) float32.
        matrix: (K, D) float32, rows sorted by decreasing variance, K >= dim.
        dim: output dimension.
        variances: (K,) float32 or None.
    """

    mean: np.ndarray
    matrix: np.ndarray
    dim: int
    variances: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2 or self.mean.shape != (self.matrix.shape[1],):
            raise ValueError(f"PCA mean {self.mean.shape} does not fit projection matrix {self.matrix.shape}")
        if not 0 < self.dim <= self.matrix.shape[0]:
            raise ValueError(f"PCA dim {self.dim} out of range for projection matrix {self.matrix.shape}")
        if self.variances is not None and self.variances.shape[0] < self.dim:
            raise ValueError(f"PCA variances {self.variances.shape} shorter than dim {self.dim}")

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for array in (self.mean, self.matrix[: self.dim], self.variances):
            h.update(b"-" if array is None else np.ascontiguousarray(array, "<f4").tobytes())
        return h.hexdigest()[:8]

    def apply(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, D) L2-normalised -> (N, dim) L2-normalised."""
        out = (descriptors - self.mean) @ self.matrix[: self.dim].T
        if self.variances is not None:
            out = out / np.sqrt(np.maximum(self.variances[: self.dim], 1e-12))
        return l2_normalise_rows(out)


def read_datum(path: Path) -> np.ndarray:
    """A float tensor in DELF's DatumProto format (delf/protos/datum.proto): field 1
    ``shape`` (packed int64 ``dim``), field 2 ``float_list`` (packed float ``value``)."""
    data = Path(path).read_bytes()
    shape: list[int] = []
    values: np.ndarray | None = None
    for field, wire, payload in _proto_fields(data):
        if field == 1 and wire == 2:
            shape = [v for f, w, v in _proto_fields(payload, packed_varints=True) if f == 1]  # type: ignore[misc]
        elif field == 2 and wire == 2:
            parts = []
            for f, w, v in _proto_fields(payload):
                if f == 1 and w == 2:
                    parts.append(np.frombuffer(v, "<f4"))  # type: ignore[arg-type]
                elif f == 1 and w == 5:
                    parts.append(np.frombuffer(v, "<f4"))  # type: ignore[arg-type]
            values = np.concatenate(parts) if parts else np.zeros(0, "<f4")
    if values is None:
        raise ValueError(f"{path}: no float values in this datum file")
    return values.astype(np.float32).reshape(shape) if shape else values.astype(np.float32)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(data: bytes, *, packed_varints: bool = False) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of each protobuf field; a packed repeated varint
    field (``packed_varints``) is expanded into one entry per value."""
    fields: list[tuple[int, int, object]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            fields.append((field, 0, value))
        elif wire == 1:
            fields.append((field, 1, data[pos : pos + 8]))
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            payload = data[pos : pos + length]
            if len(payload) != length:
                raise ValueError("truncated protobuf field")
            pos += length
            if packed_varints:
                inner = 0
                while inner < len(payload):
                    value, inner = _varint(payload, inner)
                    fields.append((field, 0, value))
            else:
                fields.append((field, 2, payload))
        elif wire == 5:
            fields.append((field, 5, data[pos : pos + 4]))
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return fields


def load_pca(pca_dir: Path, settings: ExtractionSettings) -> Pca | None:
    """The PCA installed with a model: DELF's ``mean.datum`` + ``pca_proj_mat.datum``
    (+ ``pca_vars.datum``), or ``pca.npz`` with ``mean``, ``matrix`` (+ ``variances``).
    None when the folder holds neither."""
    pca_dir = Path(pca_dir)
    if (pca_dir / "pca.npz").is_file():
        with np.load(pca_dir / "pca.npz") as npz:
            mean, matrix = npz["mean"], npz["matrix"]
            variances = npz["variances"] if "variances" in npz.files else None
    elif (pca_dir / "mean.datum").is_file() and (pca_dir / "pca_proj_mat.datum").is_file():
        mean, matrix = read_datum(pca_dir / "mean.datum"), read_datum(pca_dir / "pca_proj_mat.datum")
        variances = read_datum(pca_dir / "pca_vars.datum") if (pca_dir / "pca_vars.datum").is_file() else None
    else:
        return None
    if settings.use_whitening and variances is None:
        raise ValueError(f"{pca_dir}: use_whitening is set but no PCA variances are installed")
    return Pca(
        mean=np.asarray(mean, np.float32).reshape(-1),
        matrix=np.asarray(matrix, np.float32),
        dim=settings.pca_dim,
        variances=np.asarray(variances, np.float32).reshape(-1) if settings.use_whitening else None,
    )


# --- the model ------------------------------------------------------------------------


class OfficialModel:
    """One installed DELG/DELF model with its extraction settings: photo -> features."""

    def __init__(self, model: InstalledModel, *, max_keypoints: int, with_global: bool) -> None:
        if max_keypoints < 1:
            raise ValueError(f"max_keypoints must be positive, got {max_keypoints}")
        self.installed = model
        self.settings = model.settings
        self.max_keypoints = int(max_keypoints)
        self.with_global = with_global
        self.runner = SavedModelRunner(model.saved_model_dir, with_global=with_global)
        self.pca = load_pca(model.pca_dir, model.settings)
        # One call on a small blank photo: checks the model and gives the dimensions.
        probe = self.runner(
            np.full((64, 64, 3), 128, np.uint8),
            image_scales=self.settings.image_scales,
            max_feature_num=self.max_keypoints,
            score_threshold=self.settings.score_threshold,
            global_scales_ind=self.settings.global_scales_ind,
        )
        raw_local_dim = probe.features.shape[1]
        if self.pca is not None and self.pca.mean.shape[0] != raw_local_dim:
            raise ValueError(f"PCA expects {self.pca.mean.shape[0]}-d descriptors, the model makes {raw_local_dim}-d")
        self.local_dim = self.pca.dim if self.pca is not None else raw_local_dim
        self.global_dim = probe.global_descriptors.shape[1] if probe.global_descriptors is not None else 0

    @property
    def tag(self) -> str:
        """Identifies everything that changes the features: weights, settings, PCA, code."""
        settings = json.dumps(self.settings.to_dict(), sort_keys=True)
        config = hashlib.sha256(f"{settings}|{self.pca.digest if self.pca else '-'}".encode()).hexdigest()[:8]
        s = self.settings
        return (
            f"{self.installed.kind}{CODE_VERSION}-{self.installed.model_sha256[:12]}-s{s.image_size}"
            f"-n{self.max_keypoints}-t{s.score_threshold:g}-c{config}"
        )

    def run(self, image: np.ndarray) -> tuple[LocalFeatures, np.ndarray | None]:
        """Args: image (H, W, 3) uint8 RGB. Returns local features in its pixels, strongest
        first, and the (E,) L2-normalised global descriptor (None without one)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        resized, factors = resize_for_model(image, self.settings.image_size)
        if min(resized.shape[:2]) < MIN_SIDE:
            raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is too small for {self.installed.name}")
        raw = self.runner(
            np.ascontiguousarray(resized),
            image_scales=self.settings.image_scales,
            max_feature_num=self.max_keypoints,
            score_threshold=self.settings.score_threshold,
            global_scales_ind=self.settings.global_scales_ind,
        )
        order = np.argsort(-raw.scores, kind="stable")[: self.max_keypoints]
        keypoints, sizes = boxes_to_keypoints(raw.boxes[order], factors)
        descriptors = l2_normalise_rows(raw.features[order])
        if self.pca is not None:
            descriptors = self.pca.apply(descriptors)
        local = LocalFeatures(
            keypoints=keypoints,
            descriptors=descriptors.reshape(len(order), self.local_dim),
            scores=raw.scores[order],
            scales=sizes,
        )
        if raw.global_descriptors is None:
            return local, None
        if raw.global_descriptors.shape[0] == 0:
            raise ValueError(f"{self.installed.name} returned no global descriptor (global_scales_ind empty?)")
        total = l2_normalise_rows(raw.global_descriptors).sum(axis=0)
        norm = float(np.linalg.norm(total))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError(f"{self.installed.name} returned a zero or non-finite global descriptor")
        return local, (total / norm).astype(np.float32)


class DelgExtractor(Extractor):
    """A DELG model: global and local features from one call (spec ``delg:<name>``)."""

    def __init__(self, *, spec: str, model: InstalledModel, max_keypoints: int = 1000) -> None:
        self.spec = spec
        self.model = OfficialModel(model, max_keypoints=max_keypoints, with_global=True)

    @property
    def model_name(self) -> str:
        return self.spec

    @property
    def model_version(self) -> str:
        return self.model.tag

    @property
    def global_dim(self) -> int:
        return self.model.global_dim

    @property
    def local_dim(self) -> int:
        return self.model.local_dim

    def extract(self, image: np.ndarray) -> ImageFeatures:
        """Args: image (H, W, 3) uint8 RGB in original pixels."""
        local, global_descriptor = self.model.run(image)
        assert global_descriptor is not None
        return ImageFeatures(global_descriptor=global_descriptor, local=local)


class DelfLocal(LocalExtractor):
    """DELF local features (a DELF-only model has no global descriptor: pair it with a
    global extractor, see ``build_extractor``)."""

    name = "delf"
    version = str(CODE_VERSION)

    def __init__(self, *, model: InstalledModel, max_features: int = 1000) -> None:
        self.model = OfficialModel(model, max_keypoints=max_features, with_global=False)

    @property
    def dim(self) -> int:
        return self.model.local_dim

    @property
    def config_tag(self) -> str:
        return self.model.tag

    def extract_local(self, image: np.ndarray) -> LocalFeatures:
        """Args: image (H, W, 3) uint8 RGB. Returns keypoints in this image's pixels."""
        local, _ = self.model.run(image)
        return local
