"""Whether two photos are one picture: a re-encoded, resized, cropped or recoloured copy.

Distinct shots of one place from one spot can be as close in global descriptor (cosine
0.93-0.985 on paris5) and in fundamental-matrix inliers as a copy is; what only a copy
has is one *similarity transform* (scale, rotation, shift) that carries most of its
matches within a few pixels. Another shot, even from the same spot, moves the parts of a
3D scene by different amounts, and a similarity transform keeps only part of them.
Measured on paris5 in ``bench/near_duplicates.py`` (docs/quality.md, "Near duplicates").
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from retrieval.vision.features import LocalFeatures
from retrieval.vision.verification import VerificationConfig, tentative_matches


@dataclasses.dataclass(frozen=True)
class PictureMatch:
    """The tentative matches of two feature sets against one similarity transform."""

    tentative: int
    inliers: int
    scale: float  # of the second image relative to the first; 0 when no fit

    @property
    def share(self) -> float:
        """Inliers per tentative match (0 when there are none)."""
        return self.inliers / self.tentative if self.tentative else 0.0


def picture_match(
    first: LocalFeatures, second: LocalFeatures, config: VerificationConfig, *, tolerance: float = 0.015
) -> PictureMatch:
    """Fit one similarity transform (OpenCV ``estimateAffinePartial2D``, RANSAC) to the
    tentative matches of ``first`` and ``second`` (their keypoints: (N, 2) and (M, 2)
    pixels); inliers lie within ``tolerance`` x the second image's keypoint spread."""
    matches = tentative_matches(first, second, config)
    if len(matches) < 3:
        return PictureMatch(len(matches), 0, 0.0)
    src = first.keypoints[matches[:, 0]].astype(np.float32)
    dst = second.keypoints[matches[:, 1]].astype(np.float32)
    spread = float(np.ptp(second.keypoints, axis=0).max())
    cv2.setRNGSeed(config.seed)
    transform, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=max(1.0, tolerance * spread), maxIters=2000,
        confidence=0.999,
    )  # fmt: skip
    if transform is None or mask is None:
        return PictureMatch(len(matches), 0, 0.0)
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    return PictureMatch(len(matches), int(mask.sum()), scale)
