"""The table of extractors: every row names a spec ``check_spec`` accepts, and each fact
about a model (kind, matching settings, min inliers) is read from its row. Loads nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.vision.extractors import (
    DEFAULT_DELF_GLOBAL,
    MODELS,
    ExtractorSpec,
    UnknownModelError,
    check_spec,
    matching_config,
)
from retrieval.vision.model_registry import KINDS, ExtractionSettings, InstalledModel, installed_root
from retrieval.vision.verification import VerificationConfig

ANY_GLOBAL = next(model.name for model in MODELS if model.kind == "global")
ANY_LOCAL = next(model.name for model in MODELS if model.kind == "local" and not model.installed)


def _install(cache_dir: Path, name: str, kind: str) -> None:
    """A ``model.json`` for ``name``: all ``check_spec`` reads of an installed model."""
    directory = installed_root(cache_dir) / name
    directory.mkdir(parents=True)
    record = InstalledModel(
        name=name, kind=kind, source="test", sha256="0" * 64, model_sha256="0" * 64,
        installed_at="2026-01-01T00:00:00", settings=ExtractionSettings(), directory=directory,
    )  # fmt: skip
    (directory / "model.json").write_text(record.to_json())


def _spec(model: ExtractorSpec) -> str:
    """A spec naming ``model``, completed with another row where it is half a pipeline."""
    name = f"{model.name}:tiny-{model.name}" if model.installed else model.name
    return {"pipeline": name, "global": f"{name}+{ANY_LOCAL}", "local": f"{ANY_GLOBAL}+{name}"}[model.kind]


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.name)
def test_every_row_builds_a_spec_check_spec_accepts(model: ExtractorSpec, tmp_path: Path) -> None:
    if model.installed:
        _install(tmp_path, f"tiny-{model.name}", model.name)
    check_spec(_spec(model), cache_dir=tmp_path)


@pytest.mark.parametrize("model", [m for m in MODELS if m.kind != "global"], ids=lambda model: model.name)
def test_matching_and_min_inliers_come_from_the_row(model: ExtractorSpec) -> None:
    assert matching_config(_spec(model)) == model.matching
    assert model.min_inliers == model.matching.min_inliers


def test_names_are_unique_and_installed_rows_are_the_installable_kinds() -> None:
    assert len({model.name for model in MODELS}) == len(MODELS)
    assert sorted(model.name for model in MODELS if model.installed) == sorted(KINDS)
    assert next(model for model in MODELS if model.name == DEFAULT_DELF_GLOBAL).kind == "global"


def test_the_calibrated_settings_are_unchanged() -> None:
    """Stored results and docs/quality.md depend on these numbers."""
    by_name = {model.name: model for model in MODELS}
    dense = VerificationConfig(
        ratio=0.95, mutual=True, geometry="fundamental", relative_threshold=0.004, min_inliers=40,
        per_level=True, score="msac", max_iterations=250, precision="int8",
    )  # fmt: skip
    assert by_name["effnet-lite2-dense"].matching == by_name["effnet-lite0-dense"].matching == dense
    local = VerificationConfig(
        ratio=0.95, mutual=True, geometry="fundamental", relative_threshold=0.004, min_inliers=40
    )
    assert by_name["effnet-lite2-local"].matching == by_name["effnet-lite0-local"].matching == local
    assert by_name["xfeat"].matching == VerificationConfig(ratio=1.0, mutual=True, min_similarity=0.82)
    for name in ("rootsift", "delg", "delf"):
        assert by_name[name].matching == VerificationConfig() and by_name[name].min_inliers == 8


@pytest.mark.parametrize(
    "spec",
    ["delg", "effnet-lite2-gem", "rootsift", "effnet-lite2-gem+effnet-lite2-dense", f"{ANY_GLOBAL}+delg:x", "+delg:x"],
)
def test_specs_that_mix_up_the_kinds_are_refused(spec: str, tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="unknown extractor"):
        check_spec(spec, cache_dir=tmp_path)
