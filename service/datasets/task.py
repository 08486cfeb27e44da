"""The "import" task: a folder on the service's host read into a dataset, in the two passes
of an upload (service/datasets/imports.py)."""

from __future__ import annotations

from functools import partial

from service.datasets.imports import scan_directory, store_import
from service.datasets.service import upload_limits
from service.datasets.spec import ImportSpec
from service.jobs.context import JobContext
from service.jobs.kinds import JobStopped, Outcome


def import_folder(context: JobContext, spec: ImportSpec) -> Outcome:
    """The "import" task: check every file of the folder (pass 1, with progress); what
    stores the images, re-read (pass 2), with the job's success."""
    limits = upload_limits(context.settings)
    monitor = context.monitor
    plan = scan_directory(
        spec,
        context.settings,
        limits,
        on_progress=monitor.on_pass,
        should_stop=monitor.should_stop,
    )
    monitor.flush()
    if plan is None or monitor.should_stop():
        raise JobStopped()
    store = partial(
        store_import, claim=context.claim, spec=spec, plan=plan, cap=limits.max_image_bytes
    )
    return Outcome(store, f"{len(plan.images)} images imported from {spec.path}")
