from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from retrieval.models import ReindexJob

pytestmark = pytest.mark.django_db


def test_reindex_of_an_unknown_catalog_exits_with_a_message() -> None:
    with pytest.raises(CommandError, match="no catalog named 'nowhere'"):
        call_command("reindex", catalog="nowhere")
    assert not ReindexJob.objects.exists()


def test_reindex_no_wait_queues_a_pending_job(capsys) -> None:
    call_command("reindex", no_wait=True, stale_only=True)
    job = ReindexJob.objects.get()
    assert job.status == "pending" and job.stale_only
    assert f"reindex job {job.pk} queued" in capsys.readouterr().out
