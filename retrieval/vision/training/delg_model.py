"""A DELG network (Cao et al., ECCV'20) on EfficientNet-Lite or ResNet-50, in Keras.

- Backbone: EfficientNet-Lite with the shipped ImageNet weights (``lite0`` / ``lite2``), or
  ResNet-50 from a user-supplied Keras weights file. Two outputs: a stride-16 feature map
  (local branch; for EfficientNet-Lite the expansion layer of the first stride-32 block,
  for ResNet-50 ``conv4_block6_out``) and the stride-32 head map (global branch). Everything before the stride-32
  stage is frozen, and every BatchNormalization runs in inference mode (small batches).
- Global head: GeM pooling (p=3), a whitening fully connected layer (``global_dim``),
  L2 normalisation; trained with ArcFace (additive angular margin) on landmark labels.
- Local head, on the stride-16 map with the gradient stopped (as DELG does): an
  autoencoder (1x1 conv to ``local_dim``, 1x1 conv back) trained with a reconstruction
  loss (mean squared error relative to the features' mean square); DELF's attention
  (1x1 conv, ReLU, 1x1 conv, softplus) on the reconstructed map, trained through a
  classifier on the attention-weighted mean of the L2-normalised features
  (cross-entropy). The served local descriptors are the autoencoder codes.

:class:`DelgExport` wraps a trained network in a ``tf.Module`` whose ``serving_default``
has exactly the inputs and outputs of the official DELG exports, so that
``retrieval.vision.extractors.delg.DelgExtractor`` runs it unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import keras
import tensorflow as tf

from retrieval.vision.extractors import efficientnet_lite

BACKBONES = ("lite0", "lite2", "resnet50")
# Nominal receptive field (pixels) of a stride-16 feature, for the keypoint boxes: the
# official ResNet exports use 291 for block3; EfficientNet-Lite's is of the same order.
_RECEPTIVE_FIELD = {"lite0": 195.0, "lite2": 227.0, "resnet50": 291.0}
LOCAL_STRIDE = 16
_IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclasses.dataclass(frozen=True)
class DelgConfig:
    """Architecture and loss settings (saved with the model in ``training.json``)."""

    backbone: str = "lite0"
    global_dim: int = 512
    local_dim: int = 128
    attention_dim: int = 512
    gem_p: float = 3.0
    arcface_scale: float = 30.0
    arcface_margin: float = 0.2
    attention_loss_weight: float = 1.0
    # Of the relative reconstruction error (MSE / mean square of the features): scale-free,
    # so that it does not swamp the validation loss whatever the backbone's feature range.
    reconstruction_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if min(self.global_dim, self.local_dim, self.attention_dim) < 1:
            raise ValueError("global_dim, local_dim and attention_dim must be positive")
        if not 0 <= self.arcface_margin < math.pi / 2:
            raise ValueError(f"arcface_margin must be in [0, pi/2), got {self.arcface_margin}")

    @property
    def receptive_field(self) -> float:
        return _RECEPTIVE_FIELD[self.backbone]


def build_backbone(config: DelgConfig, *, cache_dir: Path, weights: Path | None = None) -> keras.Model:
    """(B, H, W, 3) float32 RGB in [0, 255] -> [(B, H/16, W/16, C16), (B, H/32, W/32, C32)].

    Layers before the stride-32 stage are frozen; all BatchNormalization layers too.
    """
    if config.backbone == "resnet50":
        if weights is None or not Path(weights).is_file():
            raise ValueError(f"the resnet50 backbone needs a Keras weights file (--backbone-weights), got {weights}")
        inputs = keras.Input((None, None, 3), dtype="float32", name="rgb")
        bgr = keras.layers.Lambda(lambda x: x[..., ::-1] - tf.constant(_IMAGENET_BGR_MEAN), name="caffe_preprocess")(
            inputs
        )
        resnet = keras.applications.ResNet50(include_top=False, weights=str(weights), input_tensor=bgr)
        mid, final = resnet.get_layer("conv4_block6_out").output, resnet.get_layer("conv5_block3_out").output
        model = keras.Model(inputs, [mid, final], name="resnet50_delg_backbone")
        for layer in model.layers:
            layer.trainable = layer.name.startswith("conv5_") and not isinstance(layer, keras.layers.BatchNormalization)
        return model
    full = efficientnet_lite.load_efficientnet_lite(config.backbone, cache_dir)
    specs = efficientnet_lite.block_specs(config.backbone)
    stride, strides = 2, []  # the stem has stride 2
    for spec in specs:
        stride *= spec.stride
        strides.append(stride)
    # The local map: the expansion (1x1 conv + ReLU6) of the first stride-32 block, still at
    # stride 16: 6x wider than the stride-16 block outputs (672 channels for lite0) and
    # non-negative, like ResNet's block3 that DELG reduces to 128-d.
    first32 = strides.index(2 * LOCAL_STRIDE)
    mid_name = f"block{first32}_expand_relu"
    model = keras.Model(full.inputs, [full.get_layer(mid_name).output, full.output], name=f"{config.backbone}_delg")
    trainable_prefixes = tuple(f"block{i}_" for i, s in enumerate(strides) if s == 2 * LOCAL_STRIDE) + ("head_",)
    for layer in model.layers:
        layer.trainable = layer.name.startswith(trainable_prefixes) and not isinstance(
            layer, keras.layers.BatchNormalization
        )
    return model


class DelgNetwork(keras.Model):
    """Backbone + global and local heads. See the module docstring."""

    def __init__(self, backbone: keras.Model, *, num_classes: int, config: DelgConfig) -> None:
        super().__init__(name="delg")
        if num_classes < 2:
            raise ValueError(f"need at least 2 classes, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.backbone = backbone
        mid_channels = int(backbone.outputs[0].shape[-1])
        self.whiten = keras.layers.Dense(config.global_dim, name="whiten")
        self.arcface_weights = self.add_weight(
            shape=(config.global_dim, num_classes), initializer="glorot_uniform", name="arcface_weights"
        )
        self.encoder = keras.layers.Conv2D(config.local_dim, 1, name="autoencoder_encode")
        self.decoder = keras.layers.Conv2D(mid_channels, 1, name="autoencoder_decode")
        self.attention_conv1 = keras.layers.Conv2D(config.attention_dim, 1, activation="relu", name="attention_conv1")
        self.attention_conv2 = keras.layers.Conv2D(1, 1, name="attention_conv2")
        self.attention_classifier = keras.layers.Dense(num_classes, name="attention_classifier")

    def global_descriptor(self, final: tf.Tensor) -> tf.Tensor:
        """(B, h, w, C) stride-32 map -> (B, global_dim) L2-normalised."""
        p = self.config.gem_p
        pooled = tf.reduce_mean(tf.pow(tf.maximum(final, 1e-6), p), axis=(1, 2)) ** (1.0 / p)
        return tf.math.l2_normalize(self.whiten(pooled), axis=-1)

    def local_heads(self, mid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(B, h, w, C) stride-16 map -> codes (B, h, w, local_dim), reconstruction
        (B, h, w, C) and attention scores (B, h, w, 1), all with the gradient to the
        backbone stopped."""
        mid = tf.stop_gradient(mid)
        codes = self.encoder(mid)
        reconstruction = self.decoder(codes)
        scores = tf.nn.softplus(self.attention_conv2(self.attention_conv1(reconstruction)))
        return codes, reconstruction, scores

    def call(self, images: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        mid, final = self.backbone(images, training=training)
        embedding = self.global_descriptor(final)
        codes, reconstruction, scores = self.local_heads(mid)
        normalised = tf.math.l2_normalize(reconstruction, axis=-1)
        prelogits = tf.reduce_mean(normalised * scores, axis=(1, 2))
        return {
            "embedding": embedding,
            "cosine": tf.matmul(embedding, tf.math.l2_normalize(self.arcface_weights, axis=0)),
            "attention_logits": self.attention_classifier(prelogits),
            "mid": tf.stop_gradient(mid),
            "reconstruction": reconstruction,
        }

    def losses_for(self, outputs: dict[str, tf.Tensor], labels: tf.Tensor) -> dict[str, tf.Tensor]:
        """The three DELG losses and their weighted total, each a scalar."""
        c = self.config
        logits = arcface_logits(outputs["cosine"], labels, scale=c.arcface_scale, margin=c.arcface_margin)
        arcface = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        attention = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=outputs["attention_logits"])
        )
        mid = outputs["mid"]
        reconstruction = tf.reduce_mean(tf.square(mid - outputs["reconstruction"])) / (
            tf.reduce_mean(tf.square(mid)) + 1e-6
        )
        total = arcface + c.attention_loss_weight * attention + c.reconstruction_loss_weight * reconstruction
        return {"loss": total, "arcface": arcface, "attention": attention, "reconstruction": reconstruction}


def arcface_logits(cosine: tf.Tensor, labels: tf.Tensor, *, scale: float, margin: float) -> tf.Tensor:
    """ArcFace: ``s * cos(theta + m)`` for the true class, ``s * cos(theta)`` for the others.

    Args:
        cosine: (B, K) cosines between embeddings and class centres.
        labels: (B,) int class ids.
    Past ``theta + m > pi`` (where cos is no longer decreasing) the usual linear fallback
    ``cos(theta) - m sin(m)`` is used.
    """
    cosine = tf.clip_by_value(cosine, -1.0 + 1e-7, 1.0 - 1e-7)
    sine = tf.sqrt(1.0 - tf.square(cosine))
    with_margin = cosine * math.cos(margin) - sine * math.sin(margin)
    with_margin = tf.where(cosine > math.cos(math.pi - margin), with_margin, cosine - margin * math.sin(margin))
    one_hot = tf.one_hot(labels, tf.shape(cosine)[1], dtype=cosine.dtype)
    return scale * (one_hot * with_margin + (1.0 - one_hot) * cosine)


class DelgExport(tf.Module):
    """The trained network with the official DELG serving signature.

    For each pyramid scale the photo is resized (bilinear), the backbone runs once, the
    global descriptor (GeM + whitening, L2-normalised) is kept for the scales listed in
    ``input_global_scales_ind``, and every stride-16 location whose attention score is at
    least ``input_abs_thres`` becomes a local feature: its autoencoder code, its score,
    ``1 / scale``, and a [y1, x1, y2, x2] box of the receptive field centred on the
    location, in the input photo's pixels (divided by the scale, as the official export
    does). The ``input_max_feature_num`` best scores over all scales are returned.
    """

    def __init__(self, network: DelgNetwork) -> None:
        super().__init__(name="delg_export")
        self.network = network
        self.receptive_field = float(network.config.receptive_field)
        self.global_dim = int(network.config.global_dim)
        self.local_dim = int(network.config.local_dim)

    @tf.function(
        input_signature=[
            tf.TensorSpec(shape=[None, None, 3], dtype=tf.uint8, name="input_image"),
            tf.TensorSpec(shape=[None], dtype=tf.float32, name="input_scales"),
            tf.TensorSpec(shape=(), dtype=tf.int32, name="input_max_feature_num"),
            tf.TensorSpec(shape=(), dtype=tf.float32, name="input_abs_thres"),
            tf.TensorSpec(shape=[None], dtype=tf.int32, name="input_global_scales_ind"),
        ]
    )
    def extract(  # noqa: PLR0913
        self,
        input_image: tf.Tensor,
        input_scales: tf.Tensor,
        input_max_feature_num: tf.Tensor,
        input_abs_thres: tf.Tensor,
        input_global_scales_ind: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        image = tf.cast(input_image, tf.float32)[tf.newaxis]
        size = tf.cast(tf.shape(input_image)[:2], tf.float32)
        boxes_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
        codes_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
        scales_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
        scores_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
        global_ta = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
        half = self.receptive_field / 2.0
        for i in tf.range(tf.shape(input_scales)[0]):
            scale = input_scales[i]
            new_size = tf.maximum(tf.round(size * scale), 1.0)
            resized = tf.image.resize(image, tf.cast(new_size, tf.int32), method="bilinear")
            mid, final = self.network.backbone(resized, training=False)
            global_ta = global_ta.write(i, self.network.global_descriptor(final))
            codes, _, scores = self.network.local_heads(mid)
            grid_h, grid_w = tf.shape(codes)[1], tf.shape(codes)[2]
            codes = tf.reshape(codes, [-1, self.local_dim])
            scores = tf.reshape(scores, [-1])
            # Cell centres: the grid covers the resized photo evenly ("same" padding), so
            # cell i of n is centred at (i + 0.5) / n of the side, in any photo's pixels.
            ys = (tf.cast(tf.range(grid_h), tf.float32) + 0.5) * size[0] / tf.cast(grid_h, tf.float32)
            xs = (tf.cast(tf.range(grid_w), tf.float32) + 0.5) * size[1] / tf.cast(grid_w, tf.float32)
            cy, cx = tf.meshgrid(ys, xs, indexing="ij")
            cy, cx = tf.reshape(cy, [-1]), tf.reshape(cx, [-1])
            extent = half / scale
            boxes = tf.stack([cy - extent, cx - extent, cy + extent, cx + extent], axis=1)
            keep = scores >= input_abs_thres
            boxes_ta = boxes_ta.write(i, tf.boolean_mask(boxes, keep))
            codes_ta = codes_ta.write(i, tf.boolean_mask(codes, keep))
            kept_scores = tf.boolean_mask(scores, keep)
            scores_ta = scores_ta.write(i, kept_scores)
            scales_ta = scales_ta.write(i, tf.ones_like(kept_scores) / scale)
        boxes = tf.reshape(boxes_ta.concat(), [-1, 4])
        codes = tf.reshape(codes_ta.concat(), [-1, self.local_dim])
        scores = tf.reshape(scores_ta.concat(), [-1])
        scales = tf.reshape(scales_ta.concat(), [-1])
        top = tf.math.top_k(scores, k=tf.minimum(tf.maximum(input_max_feature_num, 0), tf.size(scores)))
        globals_ = tf.reshape(global_ta.concat(), [-1, self.global_dim])
        return {
            "boxes": tf.identity(tf.gather(boxes, top.indices), name="boxes"),
            "features": tf.identity(tf.gather(codes, top.indices), name="features"),
            "scales": tf.identity(tf.gather(scales, top.indices), name="scales"),
            "scores": tf.identity(top.values[:, tf.newaxis], name="scores"),  # official: (N, 1)
            "global_descriptors": tf.identity(tf.gather(globals_, input_global_scales_ind), name="global_descriptors"),
        }


def export_saved_model(network: DelgNetwork, path: Path) -> Path:
    """Writes ``network`` as a SavedModel with the official DELG ``serving_default``."""
    module = DelgExport(network)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.extract})
    return Path(path)
