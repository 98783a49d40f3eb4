"""RootSIFT local features with OpenCV (no weights needed).

Chosen as the default local feature because it needs no downloaded weights, runs in
~0.1-0.2 s per image on a CPU, is rotation and scale invariant, and RootSIFT (Arandjelovic
& Zisserman, CVPR'12) matches better than plain SIFT at no cost.
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from retrieval.vision.extractors.base import LocalExtractor
from retrieval.vision.features import LocalFeatures
from retrieval.vision.preprocessing import resize_max_side


class RootSIFT(LocalExtractor):
    name: ClassVar[str] = "rootsift"
    version: ClassVar[str] = "1"

    def __init__(self, *, max_features: int = 1000, max_side: int = 1024) -> None:
        self.max_features = max_features
        self.max_side = max_side
        self._sift = cv2.SIFT_create(nfeatures=max_features)

    @property
    def dim(self) -> int:
        return 128

    @property
    def config_tag(self) -> str:
        return f"rootsift-n{self.max_features}-s{self.max_side}-v{self.version}"

    def extract_local(self, image: np.ndarray) -> LocalFeatures:
        """Args: image (H, W, 3) uint8 RGB. Returns at most ``max_features`` features,
        strongest first, keypoints in the input image's pixels."""
        resized, scale = resize_max_side(image, self.max_side)
        gray = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)
        keypoints, descriptors = self._sift.detectAndCompute(gray, None)
        if descriptors is None or len(keypoints) == 0:
            return LocalFeatures.empty(self.dim)
        responses = np.array([kp.response for kp in keypoints], np.float32)
        order = np.argsort(-responses, kind="stable")[: self.max_features]
        points = np.array([keypoints[i].pt for i in order], np.float32) / scale
        sizes = np.array([keypoints[i].size for i in order], np.float32) / scale
        desc = descriptors[order].astype(np.float32)
        desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-12)  # L1
        desc = np.sqrt(desc)  # Hellinger kernel: rows now have unit L2 norm
        return LocalFeatures(keypoints=points, descriptors=desc, scores=responses[order], scales=sizes)
