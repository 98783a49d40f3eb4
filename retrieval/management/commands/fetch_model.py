"""Download and install an official DELG/DELF model (or install one from a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval.vision.model_registry import KINDS, OFFICIAL_MODELS, list_installed


class Command(BaseCommand):
    help = (
        "Install a DELG/DELF SavedModel into MODEL_DIR/installed/NAME, then select it with "
        "`select_model delg:NAME` (or `delf:NAME`). Official models: "
        + ", ".join(OFFICIAL_MODELS)
        + ". Without network, download the archive elsewhere and pass --from-file."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", nargs="?", help="official model name, or your own with --kind")
        parser.add_argument("--from-file", type=Path, help="a .tar.gz/.zip archive or an unpacked folder")
        parser.add_argument(
            "--sha256", help="expected sha256 of the archive (required to download a model with no recorded checksum)"
        )
        parser.add_argument("--url", help="download from this URL instead of the official one")
        parser.add_argument(
            "--kind", choices=KINDS, help="delg (global + local) or delf (local only); for your own models"
        )
        parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
        parser.add_argument("--force", action="store_true", help="replace an installed model of the same name")
        parser.add_argument("--catalog", help="then use it for this catalog (starts a reindex)")
        parser.add_argument("--no-wait", action="store_true", help="with --catalog: do not follow the reindex job")
        parser.add_argument("--list", action="store_true", help="list official and installed models")

    def handle(self, *args: Any, name: str | None, **options: Any) -> None:
        from retrieval.vision import model_fetch

        if options["list"]:
            self._list()
            return
        if not name:
            raise CommandError("give a model name (see --list)")
        target = None
        if options["catalog"]:
            from retrieval import selectors

            target = selectors.catalog_get(name=options["catalog"])
            if target is None:
                raise CommandError(f"no catalog named {options['catalog']!r}")
        try:
            result = model_fetch.fetch(
                name,
                cache_dir=Path(settings.MODEL_DIR),
                from_file=options["from_file"],
                url=options["url"],
                sha256=options["sha256"],
                kind=options["kind"],
                timeout=options["timeout"],
                force=options["force"],
                progress=options.get("verbosity", 1) > 0,
                log=lambda line: self.stderr.write(line),
            )
        except model_fetch.FetchError as exc:
            raise CommandError(str(exc)) from None
        model = result.model
        spec = f"{model.kind}:{model.name}"
        checked = "sha256 verified" if result.verified else "sha256 not verified"
        self.stdout.write(f"installed {model.name} ({model.kind}, {checked}) in {model.directory}; use it with: {spec}")
        if target is not None:
            self._select(target, spec, no_wait=options["no_wait"])

    def _select(self, catalog: Any, spec: str, *, no_wait: bool) -> None:
        from retrieval.management.jobs import select_model_and_follow

        select_model_and_follow(catalog, spec, stdout=self.stdout, no_wait=no_wait, timeout=24 * 3600.0)

    def _list(self) -> None:
        self.stdout.write("official models:")
        for model in OFFICIAL_MODELS.values():
            checksum = model.sha256 or "unknown (pass --sha256)"
            self.stdout.write(f"  {model.name:18} {model.kind}  {model.url}")
            self.stdout.write(f"      {model.description}; sha256 {checksum}")
        installed = list_installed(Path(settings.MODEL_DIR))
        self.stdout.write("installed:" + ("" if installed else " none"))
        for model in installed:
            self.stdout.write(f"  {model.kind}:{model.name}  from {model.source} ({model.installed_at})")
