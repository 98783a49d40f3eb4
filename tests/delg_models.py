"""Tiny random SavedModels with exactly the inputs and outputs of the official DELG/DELF
exports (tensorflow/models research/delf), for tests without network.

Their keypoints sit on a GRID x GRID lattice at known fractions of the input image,
``(y, x) = ((i + 0.5) / GRID * h, (j + 0.5) / GRID * w)``, with boxes of
``BOX_HEIGHT`` x ``BOX_WIDTH`` pixels, so tests can check the mapping back to original
pixels. Feature k (row-major) has the attention score ``50 + 10 k``. Local descriptors
are a random projection of a 4x4 crop around each point, scaled by ``k + 1`` (not
normalised); global descriptors are one row per selected scale, each a different
direction (not normalised). TensorFlow is imported inside the functions.
"""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import numpy as np

GRID = 6
BOX_HEIGHT = 16.0
BOX_WIDTH = 8.0
RAW_DELF_DIM = 64


def _outputs(image, scales, max_num, thres, global_ind, local_proj, global_proj):  # noqa: ANN001, ANN202
    """The official outputs as a dict of tensors (graph or eager)."""
    import tensorflow as tf

    pixels = tf.cast(image, tf.float32) / 255.0
    h = tf.cast(tf.shape(pixels)[0], tf.float32)
    w = tf.cast(tf.shape(pixels)[1], tf.float32)
    fractions = (tf.range(GRID, dtype=tf.float32) + 0.5) / GRID
    fy, fx = tf.meshgrid(fractions, fractions, indexing="ij")
    ys, xs = tf.reshape(fy, [-1]) * h, tf.reshape(fx, [-1]) * w
    boxes = tf.stack([ys - BOX_HEIGHT / 2, xs - BOX_WIDTH / 2, ys + BOX_HEIGHT / 2, xs + BOX_WIDTH / 2], axis=1)
    normalised = boxes / tf.stack([h, w, h, w])
    crops = tf.image.crop_and_resize(pixels[tf.newaxis], normalised, tf.zeros([GRID * GRID], tf.int32), [4, 4])
    index = tf.range(GRID * GRID, dtype=tf.float32)
    features = tf.matmul(tf.reshape(crops, [GRID * GRID, 48]), local_proj) * (index[:, tf.newaxis] + 1.0)
    scores = 50.0 + 10.0 * index
    keep = scores >= thres
    boxes, features, scores = tf.boolean_mask(boxes, keep), tf.boolean_mask(features, keep), tf.boolean_mask(scores, keep)
    top = tf.math.top_k(scores, k=tf.minimum(max_num, tf.size(scores)))
    result = {
        "boxes": tf.gather(boxes, top.indices),
        "features": tf.gather(features, top.indices),
        "scales": tf.ones_like(top.values),
        "scores": top.values[:, tf.newaxis],  # official: (N, 1)
    }
    if global_proj is not None:
        base = tf.matmul(tf.reshape(tf.image.resize(pixels[tf.newaxis], [4, 4]), [1, 48]), global_proj)  # (1, D)
        selected = tf.gather(scales, global_ind)[:, tf.newaxis]  # (G, 1)
        result["global_descriptors"] = base * selected + 3.0 * selected * selected
    return result


def build_delg_tf2(path: Path, *, local_dim: int = 128, global_dim: int = 2048, seed: int = 0) -> Path:
    """A TF2 export like ``export_local_and_global_model.py``: a serving_default signature."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    class TinyDelg(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.local_proj = tf.Variable(rng.normal(size=(48, local_dim)).astype(np.float32))
            self.global_proj = tf.Variable(rng.normal(size=(48, global_dim)).astype(np.float32))

        @tf.function(
            input_signature=[
                tf.TensorSpec(shape=[None, None, 3], dtype=tf.uint8, name="input_image"),
                tf.TensorSpec(shape=[None], dtype=tf.float32, name="input_scales"),
                tf.TensorSpec(shape=(), dtype=tf.int32, name="input_max_feature_num"),
                tf.TensorSpec(shape=(), dtype=tf.float32, name="input_abs_thres"),
                tf.TensorSpec(shape=[None], dtype=tf.int32, name="input_global_scales_ind"),
            ]
        )
        def ExtractFeatures(self, input_image, input_scales, input_max_feature_num, input_abs_thres, input_global_scales_ind):  # noqa: ANN001, ANN202, N802
            out = _outputs(
                input_image, input_scales, input_max_feature_num, input_abs_thres, input_global_scales_ind,
                self.local_proj, self.global_proj,
            )  # fmt: skip
            return {name: tf.identity(tensor, name=name) for name, tensor in out.items()}

    module = TinyDelg()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.ExtractFeatures})
    return path


def build_tf1(path: Path, *, with_global: bool, local_dim: int = RAW_DELF_DIM, global_dim: int = 32, seed: int = 1) -> Path:
    """A TF1 export (graph + variables, no signature) with the named tensors
    ``input_image:0`` ... ``scores:0`` (and ``global_descriptors:0`` ``with_global``),
    like the published DELF/DELG archives."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        image = v1.placeholder(tf.uint8, [None, None, 3], name="input_image")
        scales = v1.placeholder(tf.float32, [None], name="input_scales")
        max_num = v1.placeholder(tf.int32, [], name="input_max_feature_num")
        thres = v1.placeholder(tf.float32, [], name="input_abs_thres")
        global_ind = v1.placeholder(tf.int32, [None], name="input_global_scales_ind") if with_global else None
        local_proj = v1.get_variable("local_proj", initializer=rng.normal(size=(48, local_dim)).astype(np.float32))
        global_proj = (
            v1.get_variable("global_proj", initializer=rng.normal(size=(48, global_dim)).astype(np.float32))
            if with_global
            else None
        )
        out = _outputs(image, scales, max_num, thres, global_ind, local_proj, global_proj)
        for name, tensor in out.items():
            tf.identity(tensor, name=name)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, [v1.saved_model.tag_constants.SERVING])
            builder.save()
    return path


def write_datum(path: Path, array: np.ndarray) -> None:
    """DELF's DatumProto (delf/protos/datum.proto), encoded by hand: shape, then floats."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    dims = b"".join(varint(d) for d in array.shape)
    floats = np.ascontiguousarray(array, "<f4").tobytes()
    path.write_bytes(field(1, field(1, dims)) + field(2, field(1, floats)))


def write_pca(directory: Path, *, raw_dim: int = RAW_DELF_DIM, seed: int = 2) -> dict[str, np.ndarray]:
    """DELF-style PCA files (mean, orthonormal projection, variances) in ``directory``."""
    rng = np.random.default_rng(seed)
    matrix, _ = np.linalg.qr(rng.normal(size=(raw_dim, raw_dim)))
    arrays = {
        "mean": (rng.normal(size=raw_dim) * 0.01).astype(np.float32),
        "matrix": matrix.T.astype(np.float32),
        "variances": np.linspace(2.0, 0.1, raw_dim).astype(np.float32),
    }
    directory.mkdir(parents=True, exist_ok=True)
    write_datum(directory / "mean.datum", arrays["mean"])
    write_datum(directory / "pca_proj_mat.datum", arrays["matrix"])
    write_datum(directory / "pca_vars.datum", arrays["variances"])
    return arrays


def tar_gz(folder: Path, archive: Path, *, arcname: str) -> Path:
    """Pack ``folder`` as ``arcname/`` in a .tar.gz, like the official archives."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return archive


def tar_with_member(archive: Path, name: str, *, symlink_to: str | None = None) -> Path:
    """A .tar.gz with one hostile member (``../x``, ``/x`` or a link)."""
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        if symlink_to is not None:
            info.type, info.linkname = tarfile.SYMTYPE, symlink_to
            tar.addfile(info)
        else:
            data = b"x"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def fake_saved_model(folder: Path) -> Path:
    """A folder laid out like a SavedModel (not loadable: for the fetch command only)."""
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01" + struct.pack("<I", 7))
    (folder / "variables" / "variables.index").write_bytes(b"index")
    return folder
