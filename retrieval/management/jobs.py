"""Following a background reindex job from a command, with a progress bar."""

from __future__ import annotations

import time

from django.core.management.base import CommandError, OutputWrapper
from tqdm import tqdm

from retrieval.models import ReindexJob


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
