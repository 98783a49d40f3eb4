"""Print how much storage each catalog's images and descriptors take."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval.errors import NotFound
from retrieval.storage_stats import catalog_storage_stats


def human_bytes(size: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    scaled, unit = float(size), 0
    while scaled >= 1024 and unit < len(units) - 1:
        scaled /= 1024
        unit += 1
    return f"{size} B" if unit == 0 else f"{scaled:.1f} {units[unit]}"


def _kib(size: float | None) -> str:
    return "-" if size is None else f"{size / 1024:.1f}"


class Command(BaseCommand):
    help = (
        "Images per status and descriptor bytes per image for each catalog, then the database, "
        "table and HNSW index sizes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--catalog", help="only this catalog (default: all)")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print the figures as JSON (indent 2)")

    def handle(self, *args: Any, catalog: str | None, as_json: bool, **options: Any) -> None:
        try:
            stats = catalog_storage_stats(catalog=catalog)
        except NotFound as exc:
            raise CommandError(exc.message) from None
        if as_json:
            self.stdout.write(json.dumps(stats, indent=2))
        else:
            self._write_table(stats)

    def _write_table(self, stats: dict[str, Any]) -> None:
        out = self.stdout.write
        out(
            f"{'catalog':<24} {'images':>8} {'indexed':>8} {'local KiB/img':>14} {'local KiB max':>14} "
            f"{'global B/img':>13}  model"
        )
        for item in stats["catalogs"]:
            model = item["active_model"]
            model_label = f"{model['name']}@{model['version']}" if model else "-"
            global_bytes = item["global_bytes_per_image"]
            global_label = "-" if global_bytes is None else f"{global_bytes:.0f}"
            out(
                f"{item['name']:<24} {item['images']:>8} {item['indexed']:>8} "
                f"{_kib(item['local_bytes_per_image']):>14} {_kib(item['local_bytes_max']):>14} "
                f"{global_label:>13}  {model_label}"
            )
        if not stats["catalogs"]:
            out("(no catalogs)")
        out("")
        out(f"database: {human_bytes(stats['database_bytes'])}")
        out(f"{'table':<32} {'table':>11} {'indexes':>11} {'total':>11}")
        for table in stats["tables"]:
            out(
                f"{table['name']:<32} {human_bytes(table['table_bytes']):>11} "
                f"{human_bytes(table['index_bytes']):>11} {human_bytes(table['total_bytes']):>11}"
            )
        out(
            f"what searches read (tables, indexes; no local features): {human_bytes(stats['search_working_set_bytes'])}"
        )
        if stats["hnsw_indexes"]:
            out("")
            out(f"{'hnsw index':<32} {'size':>11}")
            for index in stats["hnsw_indexes"]:
                out(f"{index['name']:<32} {human_bytes(index['bytes']):>11}")
