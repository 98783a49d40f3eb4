"""Loading converted PyTorch weights into Keras models (shared by the weight converters)."""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np


def assign_weights(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    """Set every layer's weights from ``weights`` (layer name -> arrays in Keras order).

    Raises ValueError on a shape mismatch, a layer without weights in the source, or
    source weights that no layer used, so that a wrong file never loads silently.
    """
    remaining = dict(weights)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in remaining:
            raise ValueError(f"no converted weights for layer {layer.name}")
        arrays = remaining.pop(layer.name)
        for variable, array in zip(layer.weights, arrays, strict=True):
            if tuple(variable.shape) != array.shape:
                raise ValueError(f"{layer.name}: weight {variable.path} is {variable.shape}, source is {array.shape}")
        layer.set_weights([a.astype(np.float32) for a in arrays])
    if remaining:
        raise ValueError(f"converted weights left unused: {sorted(remaining)}")


def save_weights(model: keras.Model, path: str | Path) -> None:
    """``model.save_weights`` without Keras' numpy-2 ``copy=`` warning per variable."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*__array__ implementation doesn't accept a copy", category=DeprecationWarning
        )
        model.save_weights(str(path))
