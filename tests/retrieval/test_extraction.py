"""The "same place" inlier threshold: calibrated per local feature, overridable."""

from __future__ import annotations

import pytest
from django.test import override_settings

from retrieval.extraction import min_inliers


def test_each_local_feature_brings_its_calibrated_threshold() -> None:
    with override_settings(LANDMARKS_MIN_INLIERS=None):
        assert min_inliers("effnet-lite2-gem+rootsift") == 8
        assert min_inliers("effnet-lite2-gem+effnet-lite2-local") == 40


@pytest.mark.parametrize("spec", ["effnet-lite2-gem+rootsift", "effnet-lite2-gem+effnet-lite2-local"])
def test_the_setting_overrides_the_calibrated_threshold(spec: str) -> None:
    with override_settings(LANDMARKS_MIN_INLIERS=15):
        assert min_inliers(spec) == 15
