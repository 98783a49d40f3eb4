"""Train our own DELG model on a catalog's labelled photos and install it as ``delg:NAME``."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval import selectors

BACKBONES = ("lite0", "lite2", "resnet50")  # retrieval.vision.training.delg_model.BACKBONES (no TF here)
SERVING_SCALES = (0.7071, 1.0, 1.4142)


class Command(BaseCommand):
    help = (
        "Train a DELG model (EfficientNet-Lite or ResNet-50 backbone; GeM + whitening with ArcFace, "
        "attention + autoencoder local features) on the landmarks of a catalog, export it with the "
        "official DELG signature and install it in MODEL_DIR/installed/NAME; use it with delg:NAME "
        "(--select switches the catalog to it and starts the reindex)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--catalog", required=True, help="catalog whose labelled photos to train on")
        parser.add_argument("--name", help="installed model name (default: <catalog>-<backbone>)")
        parser.add_argument("--epochs", type=int, default=20, help="maximum epochs (early stopping on validation loss)")
        parser.add_argument("--image-size", type=int, default=256, help="training crop side in pixels")
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument("--learning-rate", type=float, default=1e-3, help="of the heads (backbone: a tenth)")
        parser.add_argument("--patience", type=int, default=3, help="epochs without improvement before stopping")
        parser.add_argument("--validation-fraction", type=float, default=0.15)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--backbone", choices=BACKBONES, default="lite0")
        parser.add_argument("--backbone-weights", type=Path, help="Keras ResNet-50 notop weights file (resnet50)")
        parser.add_argument(
            "--serving-size", type=int, help="photos are shrunk to this long side when served (default 2x, 512-1024)"
        )
        parser.add_argument("--force", action="store_true", help="replace an installed model of the same name")
        parser.add_argument("--select", action="store_true", help="then use it for the catalog (starts a reindex)")
        parser.add_argument("--no-wait", action="store_true", help="with --select: do not follow the reindex job")

    def handle(self, *args: Any, **options: Any) -> None:
        catalog = selectors.catalog_get(name=options["catalog"])
        if catalog is None:
            raise CommandError(f"no catalog named {options['catalog']!r}")
        name, cache_dir, serving_size = self._checked(catalog, options)
        data = self._training_set(catalog, max_side=max(serving_size, round(1.25 * options["image_size"])))
        cache_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".training-{name}-"))
        try:
            model = self._train_and_install(
                catalog, data, name=name, cache_dir=cache_dir, serving_size=serving_size, work=work, options=options
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        spec = f"delg:{model.name}"
        self.stdout.write(f"installed {model.name} in {model.directory}; use it with: {spec}")
        if options["select"]:
            self._select(catalog, spec, no_wait=options["no_wait"])

    def _checked(self, catalog: Any, options: dict[str, Any]) -> tuple[str, Path, int]:
        """The model name, the model folder and the serving size, or a CommandError."""
        from retrieval.vision.model_registry import installed_root, validate_name

        backbone = options["backbone"]
        name = options["name"] or f"{catalog.name}-{backbone}".lower()
        try:
            validate_name(name)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        cache_dir = Path(settings.MODEL_DIR)
        if (installed_root(cache_dir) / name).exists() and not options["force"]:
            raise CommandError(f"a model named {name!r} is already installed; pass --force to replace it or --name")
        weights = options["backbone_weights"]
        if backbone == "resnet50" and (weights is None or not weights.is_file()):
            raise CommandError("--backbone resnet50 needs --backbone-weights FILE (Keras ResNet50 notop weights)")
        if options["epochs"] < 1 or options["image_size"] < 32 or options["batch_size"] < 1:
            raise CommandError("--epochs and --batch-size must be positive and --image-size at least 32")
        return name, cache_dir, options["serving_size"] or min(1024, max(512, 2 * options["image_size"]))

    def _train_and_install(
        self, catalog: Any, data: Any, *, name: str, cache_dir: Path, serving_size: int, work: Path,
        options: dict[str, Any],
    ) -> Any:  # fmt: skip
        """Train in ``work``, export with the DELG signature and install; the installed model."""
        from retrieval.vision import model_fetch
        from retrieval.vision.model_registry import ExtractionSettings
        from retrieval.vision.training import trainer
        from retrieval.vision.training.delg_model import DelgConfig

        train_settings = trainer.TrainingSettings(
            image_size=options["image_size"],
            epochs=options["epochs"],
            batch_size=options["batch_size"],
            learning_rate=options["learning_rate"],
            validation_fraction=options["validation_fraction"],
            patience=options["patience"],
            seed=options["seed"],
        )
        try:
            result = trainer.train(
                data.images,
                data.labels,
                config=DelgConfig(backbone=options["backbone"]),
                settings=train_settings,
                cache_dir=cache_dir,
                backbone_weights=options["backbone_weights"],
                checkpoint_dir=work / "checkpoint",
                log=self.stdout.write,
                progress=options["verbosity"] > 0,
            )
            self.stdout.write(
                f"trained in {result.seconds:.0f} s on {result.device}; best epoch {result.best_epoch}; clean "
                f"training loss {result.initial_train_loss:.3f} -> {result.final_train_loss:.3f}"
            )
            threshold = trainer.export_threshold(result.network, data.images, max_side=serving_size)
            extraction = ExtractionSettings(
                image_size=serving_size,
                image_scales=SERVING_SCALES,
                global_scales_ind=tuple(range(len(SERVING_SCALES))),
                score_threshold=round(threshold, 4),
            )
            export_dir = trainer.export(
                result,
                work / "export" / "saved_model",
                metadata={"catalog": catalog.name, "image_ids": data.image_ids, "settings": extraction.to_dict()},
            )
            return model_fetch.install(
                name=name,
                kind="delg",
                source_path=export_dir.parent,
                source=f"trained:catalog={catalog.name},backbone={options['backbone']},epochs={len(result.history)}",
                sha256=model_fetch.tree_sha256(export_dir),
                cache_dir=cache_dir,
                settings=extraction,
                force=options["force"],
            )
        except (ValueError, model_fetch.FetchError) as exc:
            raise CommandError(str(exc)) from None

    def _training_set(self, catalog: Any, *, max_side: int) -> Any:
        from retrieval.errors import RetrievalError
        from retrieval.training import catalog_training_set

        started = time.monotonic()
        try:
            data = catalog_training_set(catalog=catalog, max_side=max_side)
        except RetrievalError as exc:
            raise CommandError(exc.message) from None
        for line in data.skipped:
            self.stderr.write(f"skipped image {line}")
        if data.dropped_landmarks:
            self.stderr.write(f"left out (too few photos): {', '.join(data.dropped_landmarks)}")
        self.stdout.write(
            f"read {len(data.images)} photos of {len(set(data.labels))} landmarks in {time.monotonic() - started:.0f} s"
        )
        return data

    def _select(self, catalog: Any, spec: str, *, no_wait: bool) -> None:
        from retrieval.management.jobs import select_model_and_follow

        select_model_and_follow(catalog, spec, stdout=self.stdout, no_wait=no_wait, timeout=24 * 3600.0)
