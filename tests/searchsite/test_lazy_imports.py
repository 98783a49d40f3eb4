"""Web processes and non-extracting commands never load TensorFlow."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_django_setup_views_tasks_and_services_do_not_import_tensorflow() -> None:
    code = textwrap.dedent(
        """
        import sys, django
        django.setup()
        import searchsite.urls, retrieval.views, retrieval.tasks, retrieval.services, retrieval.admin
        import retrieval.management.commands.import_catalog, retrieval.management.commands.reindex
        import retrieval.management.commands.train_model, retrieval.training
        import searchsite.wsgi
        heavy = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
        print(",".join(heavy) or "none")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "searchsite.settings"},
    )  # fmt: skip
    assert result.stdout.strip() == "none", result.stderr
