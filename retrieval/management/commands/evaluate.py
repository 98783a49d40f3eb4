"""Score search quality on an evaluation dataset (see docs/datasets.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval import evaluation
from retrieval.vision.datasets import DatasetError


class Command(BaseCommand):
    help = (
        "Evaluate the configured extractor and search settings on DATASET_DIR: a retrieval "
        "set (dataset.json) is indexed into a throw-away catalog and every query is searched "
        "as POST /api/search does (mAP, mP@k, recall@k for the global and the verified "
        "ranking, recognition accuracy and GAP); a pair set (pairs.json) scores geometric "
        "verification on true against mismatched pairs (AUC, inliers). Runs in this process; "
        "no Celery worker is needed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset_dir", type=Path, help="folder with dataset.json and/or pairs.json")
        parser.add_argument("--json", dest="json_path", type=Path, help="write the results as JSON here")
        parser.add_argument("--markdown", dest="markdown_path", type=Path, help="write a Markdown report here")
        parser.add_argument("--plots", dest="plots_dir", type=Path, help="write PNG plots into this folder")
        parser.add_argument(
            "--top-k",
            dest="top_k",
            type=int,
            help="score only the first K results of each ranking (default: the whole catalog)",
        )
        parser.add_argument(
            "--ransac-seeds",
            dest="ransac_seeds",
            type=int,
            default=1,
            help="pair sets: verify every pair with RANSAC seeds 0..N-1 and report the mean AUC and its "
            "range (default 1: seed 0, the server's)",
        )
        parser.add_argument(
            "--same-place",
            dest="same_place",
            action="append",
            default=[],
            metavar="ID,ID[,ID...]",
            help="pair sets: these pairs show the same place, so they are never combined into a "
            "mismatched pair (for files without a 'place' field; repeatable)",
        )
        parser.add_argument(
            "--augment-every",
            dest="augment_every",
            type=int,
            default=0,
            metavar="N",
            help="retrieval sets: augment the catalog after every N images indexed, as a catalog growing by "
            "imports is (incremental DBA after the first run); default: once at the end",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def handle(
        self,
        *args: Any,
        dataset_dir: Path,
        json_path: Path | None,
        markdown_path: Path | None,
        plots_dir: Path | None,
        top_k: int | None,
        ransac_seeds: int,
        same_place: list[str],
        augment_every: int,
        no_progress: bool,
        **options: Any,
    ) -> None:
        if augment_every < 0:
            raise CommandError(f"--augment-every must be 0 or more, got {augment_every}")
        if top_k is not None and top_k < 1:
            raise CommandError(f"--top-k must be at least 1, got {top_k}")
        if ransac_seeds < 1:
            raise CommandError(f"--ransac-seeds must be at least 1, got {ransac_seeds}")
        try:
            retrieval, pairs = evaluation.load_datasets(dataset_dir)
            groups = [[pair_id.strip() for pair_id in group.split(",") if pair_id.strip()] for group in same_place]
            result = evaluation.evaluate(
                retrieval,
                pairs,
                top_k=top_k,
                ransac_seeds=int(ransac_seeds),
                same_place=groups,
                augment_every=int(augment_every),
                progress=not no_progress,
            )
        except DatasetError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError("interrupted; the throw-away catalog was deleted") from None
        summary = result.summary
        # call_command() passes options as given, without the parser's type conversion.
        json_path, markdown_path, plots_dir = (Path(p) if p else None for p in (json_path, markdown_path, plots_dir))
        self.stdout.write(evaluation.render_text(summary))
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(summary, indent=2) + "\n")
            self.stdout.write(f"wrote {json_path}")
        if markdown_path is not None:
            markdown_path.parent.mkdir(parents=True, exist_ok=True)
            markdown_path.write_text(evaluation.render_markdown(summary))
            self.stdout.write(f"wrote {markdown_path}")
        if plots_dir is not None:
            for path in evaluation.write_plots(result, plots_dir):
                self.stdout.write(f"wrote {path}")
