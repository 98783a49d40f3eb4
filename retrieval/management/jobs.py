"""Following a background reindex job from a command, with a progress bar."""

from __future__ import annotations

import time

from django.core.management.base import CommandError, OutputWrapper
from tqdm import tqdm

from retrieval.models import Catalog, ReindexJob


def follow_job(job: ReindexJob, *, stdout: OutputWrapper, timeout: float) -> ReindexJob:
    """Show the job's progress until it finishes; CommandError if it fails or times out."""
    deadline = time.monotonic() + timeout
    with tqdm(desc=f"reindex job {job.pk}", unit="img") as bar:
        while True:
            job.refresh_from_db()
            bar.total = job.total or None
            bar.n = job.processed
            bar.refresh()
            if job.status in (ReindexJob.Status.DONE, ReindexJob.Status.FAILED):
                break
            if time.monotonic() > deadline:
                raise CommandError(f"job {job.pk} still {job.status} after {timeout:.0f} s; is a worker running?")
            time.sleep(0.5)
    if job.status == ReindexJob.Status.FAILED:
        raise CommandError(f"reindex job {job.pk} failed: {job.error}")
    stdout.write(f"reindex job {job.pk} done: {job.processed} processed, {job.failed} failed, model {job.model}")
    return job


def select_model_and_follow(catalog: Catalog, spec: str, *, stdout: OutputWrapper, no_wait: bool, timeout: float) -> None:
    """Switch ``catalog`` to ``spec`` (a reindex job) and follow the job unless ``no_wait``."""
    from retrieval import services
    from retrieval.errors import RetrievalError

    try:
        job = services.catalog_select_model(catalog=catalog, spec=spec)
    except RetrievalError as exc:
        raise CommandError(exc.message) from None
    stdout.write(f"catalog {catalog.name} now uses {spec}; reindex job {job.pk} queued")
    if not no_wait:
        follow_job(job, stdout=stdout, timeout=timeout)
