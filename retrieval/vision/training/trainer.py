"""Train a DELG network on labelled photos and export it as an official-signature SavedModel.

The photos are held in memory, already shrunk so that their longer side is
``1.25 * image_size``. The split into training and validation is by image, stratified by
label and seeded; a label with a single image is used for training only. Training
batches are random resized crops (35-100 % of the area, aspect 3/4-4/3) resized to
``image_size`` squared, with mild brightness / contrast / saturation changes (no flips:
mirrored buildings are other buildings to the local features); validation photos are
resized whole. Two Adam optimisers: the heads at ``learning_rate``, the unfrozen backbone
stage at a tenth of it. After each epoch the validation loss is computed; the best
weights are kept (and written to ``checkpoint_dir`` when given) and training stops after
``patience`` epochs without improvement. TensorFlow places everything on a GPU when it
sees one.

``export_threshold`` then picks the attention-score threshold recorded with the model:
a low quantile of the scores on training photos, so flat regions are dropped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

from retrieval.vision.training.delg_model import DelgConfig, DelgNetwork, build_backbone, export_saved_model

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """Attributes:
    image_size: side of the square training crops.
    epochs: maximum number of epochs.
    batch_size: photos per step.
    learning_rate: of the heads (the backbone gets a tenth).
    validation_fraction: share of each label's photos held out (at least one when the
        label has two or more).
    patience: epochs without a better validation loss before stopping.
    seed: for the split, the crops and the initial weights.
    """

    image_size: int = 256
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3
    validation_fraction: float = 0.15
    patience: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be positive")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")


@dataclasses.dataclass
class TrainingResult:
    """What a run did. ``history`` holds one dict per epoch (train / validation losses)."""

    network: DelgNetwork
    classes: list[str]
    history: list[dict[str, float]]
    best_epoch: int
    train_images: int
    validation_images: int
    seconds: float
    initial_train_loss: float
    final_train_loss: float
    device: str


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the same with its longer side at most ``max_side`` (INTER_AREA)."""
    height, width = image.shape[:2]
    factor = max_side / max(height, width)
    if factor >= 1:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def stratified_split(labels: Sequence[int], *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): per label, ``round(fraction * n)`` photos (at least one
    when n >= 2 and fraction > 0, never all of them) go to validation."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, validation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = 0
        if fraction > 0 and len(members) >= 2:
            n_val = min(len(members) - 1, max(1, round(fraction * len(members))))
        validation.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.array(train, int)), np.sort(np.array(validation, int))


def _dataset(
    images: list[np.ndarray], labels: np.ndarray, *, settings: TrainingSettings, augment: bool, seed: int
) -> tf.data.Dataset:
    size = settings.image_size

    def generate():  # noqa: ANN202
        order = np.random.default_rng(seed + generate.calls).permutation(len(images)) if augment else range(len(images))
        generate.calls += 1
        for i in order:
            yield images[i], labels[i]

    generate.calls = 0  # type: ignore[attr-defined]
    spec = (tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int32))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec)

    def crop(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        begin, extent, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.zeros([1, 0, 4]),
            min_object_covered=0.0,
            aspect_ratio_range=(0.75, 1.333),
            area_range=(0.35, 1.0),
            use_image_if_no_bounding_boxes=True,
        )
        x = tf.image.resize(tf.slice(image, begin, extent), [size, size]) / 255.0
        x = tf.image.random_brightness(x, 0.1)
        x = tf.image.random_contrast(x, 0.85, 1.15)
        x = tf.image.random_saturation(x, 0.85, 1.15)
        return tf.clip_by_value(x, 0.0, 1.0) * 255.0, label

    def whole(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.image.resize(image, [size, size]), label

    dataset = dataset.map(crop if augment else whole, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(settings.batch_size).prefetch(tf.data.AUTOTUNE)


def train(
    images: list[np.ndarray],
    labels: Sequence[str],
    *,
    config: DelgConfig,
    settings: TrainingSettings,
    cache_dir: Path,
    backbone_weights: Path | None = None,
    checkpoint_dir: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> TrainingResult:
    """Trains a DELG network on ``images`` ((H, W, 3) uint8 RGB) with landmark ``labels``.

    Raises:
        ValueError: fewer than two distinct labels, or images and labels of other lengths.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"need photos of at least 2 landmarks, got {len(classes)}")
    started = time.monotonic()
    keras_seed(settings.seed)
    class_ids = np.array([classes.index(label) for label in labels], np.int32)
    shrunk = [shrink(image, round(1.25 * settings.image_size)) for image in images]
    train_idx, val_idx = stratified_split(class_ids, fraction=settings.validation_fraction, seed=settings.seed)
    train_images, train_labels = [shrunk[i] for i in train_idx], class_ids[train_idx]
    val_images, val_labels = [shrunk[i] for i in val_idx], class_ids[val_idx]
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    log(
        f"{len(classes)} landmarks, {len(train_idx)} training and {len(val_idx)} validation photos, "
        f"{config.backbone} at {settings.image_size} px on {device}"
    )

    network = DelgNetwork(
        build_backbone(config, cache_dir=cache_dir, weights=backbone_weights), num_classes=len(classes), config=config
    )
    network(tf.zeros([1, settings.image_size, settings.image_size, 3]))  # builds the heads
    backbone_vars = network.backbone.trainable_variables
    backbone_ids = {id(v) for v in backbone_vars}
    head_vars = [v for v in network.trainable_variables if id(v) not in backbone_ids]
    head_optimizer = keras.optimizers.Adam(settings.learning_rate)
    backbone_optimizer = keras.optimizers.Adam(settings.learning_rate / 10)

    @tf.function(reduce_retracing=True)
    def train_step(x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            losses = network.losses_for(network(x, training=True), y)
        grads = tape.gradient(losses["loss"], head_vars + backbone_vars)
        head_optimizer.apply_gradients(zip(grads[: len(head_vars)], head_vars, strict=True))
        if backbone_vars:
            backbone_optimizer.apply_gradients(zip(grads[len(head_vars) :], backbone_vars, strict=True))
        return losses

    @tf.function(reduce_retracing=True)
    def eval_step(x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        return network.losses_for(network(x, training=False), y)

    def evaluate(subset: list[np.ndarray], subset_labels: np.ndarray) -> dict[str, float]:
        totals: dict[str, float] = {}
        for x, y in _dataset(subset, subset_labels, settings=settings, augment=False, seed=0):
            for name, value in eval_step(x, y).items():
                totals[name] = totals.get(name, 0.0) + float(value) * int(y.shape[0])
        return {name: value / max(1, len(subset)) for name, value in totals.items()}

    probe = min(len(train_images), 256)  # the clean (unaugmented) training loss, before and after
    initial_train_loss = evaluate(train_images[:probe], train_labels[:probe])["loss"]
    train_data = _dataset(train_images, train_labels, settings=settings, augment=True, seed=settings.seed)
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_weights = math.inf, 0, None
    steps = math.ceil(len(train_images) / settings.batch_size)
    for epoch in range(1, settings.epochs + 1):
        epoch_start = time.monotonic()
        bar = keras.utils.Progbar(steps, stateful_metrics=["loss"], verbose=1 if progress else 0)
        sums: dict[str, float] = {}
        seen = 0
        for step, (x, y) in enumerate(train_data, start=1):
            losses = train_step(x, y)
            n = int(y.shape[0])
            seen += n
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
            bar.update(step, [("loss", sums["loss"] / seen)])
        record = {f"train_{k}": v / max(1, seen) for k, v in sums.items()}
        monitored = record["train_loss"]
        if val_images:
            validation = evaluate(val_images, val_labels)
            record.update({f"val_{k}": v for k, v in validation.items()})
            monitored = validation["loss"]
        record["seconds"] = time.monotonic() - epoch_start
        history.append(record)
        improved = monitored < best_loss
        log(
            f"epoch {epoch}/{settings.epochs}: loss {record['train_loss']:.4f} (arcface {record['train_arcface']:.3f}, "
            f"attention {record['train_attention']:.3f}, reconstruction {record['train_reconstruction']:.3f})"
            + (f", validation loss {record['val_loss']:.4f}" if "val_loss" in record else "")
            + f", {record['seconds']:.0f} s" + (" *" if improved else "")
        )
        if improved:
            best_loss, best_epoch = monitored, epoch
            with warnings.catch_warnings():
                # Keras calls np.array() on TF variables: a numpy-2 copy= warning per variable.
                warnings.filterwarnings("ignore", message=".*__array__ implementation", category=DeprecationWarning)
                best_weights = network.get_weights()
                if checkpoint_dir is not None:
                    checkpoint_dir.mkdir(parents=True, exist_ok=True)
                    network.save_weights(checkpoint_dir / "best.weights.h5")
        elif epoch - best_epoch >= settings.patience:
            log(f"no better validation loss for {settings.patience} epochs: stopping")
            break
    if best_weights is not None:
        network.set_weights(best_weights)
    final_train_loss = evaluate(train_images[:probe], train_labels[:probe])["loss"]
    return TrainingResult(
        network=network,
        classes=classes,
        history=history,
        best_epoch=best_epoch,
        train_images=len(train_images),
        validation_images=len(val_images),
        seconds=time.monotonic() - started,
        initial_train_loss=initial_train_loss,
        final_train_loss=final_train_loss,
        device=device,
    )


def keras_seed(seed: int) -> None:
    keras.utils.set_random_seed(seed)


def export_threshold(
    network: DelgNetwork, images: Sequence[np.ndarray], *, max_side: int, quantile: float = 0.2
) -> float:
    """The ``quantile`` of the attention scores over (up to 32 of) ``images`` at ``max_side``."""
    scores = []
    for image in list(images)[:32]:
        x = tf.convert_to_tensor(shrink(image, max_side)[np.newaxis].astype(np.float32))
        mid, _ = network.backbone(x, training=False)
        scores.append(network.local_heads(mid)[2].numpy().reshape(-1))
    return float(np.quantile(np.concatenate(scores), quantile)) if scores else 0.0


def export(result: TrainingResult, path: Path, *, metadata: dict[str, object]) -> Path:
    """Writes the SavedModel to ``path`` with ``assets/training.json`` (classes, history,
    configuration and ``metadata``)."""
    export_saved_model(result.network, path)
    record = {
        **metadata,
        "classes": result.classes,
        "config": dataclasses.asdict(result.network.config),
        "best_epoch": result.best_epoch,
        "history": result.history,
        "train_images": result.train_images,
        "validation_images": result.validation_images,
        "training_seconds": round(result.seconds, 1),
        "device": result.device,
    }
    (path / "assets").mkdir(exist_ok=True)
    (path / "assets" / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return path
