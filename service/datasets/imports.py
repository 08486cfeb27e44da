"""Server-side import: a directory of class folders on the service's host becomes a dataset
(or grows one), for data that never passes through HTTP.

The API checks the path and queues a job of kind "import" (`submit_import`); the worker
reads the directory in the two passes of an upload (service/datasets/ingest.py): `scan_directory`
decodes every file once and keeps only its verdict, reporting progress; `store_import` then
reads the kept images again and inserts them in bounded batches in the one transaction that
marks the job succeeded, so a failed or cancelled import leaves nothing behind.

Nothing outside IMPORT_ROOT is read: the requested directory is resolved (every symlink
followed) and must lie inside the root's real path; inside it, a symlinked folder is not
followed and a symlinked file is read only when its target lies inside the root too, and
files are opened without following a link at the last step (O_NOFOLLOW). Only regular files
are read: a FIFO, socket or device under the root is skipped with a reason, never opened in a
way that could block (lstat first, O_NONBLOCK, then fstat on what was opened).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session

from service import jobs
from service.config import Settings
from service.datasets import service as datasets
from service.datasets.ingest import (
    BadArchive,
    Checked,
    Limits,
    Plan,
    Planned,
    check_image,
    is_os_junk,
    plan_images,
    require_classes,
    verified,
)
from service.datasets.kind import IMPORT
from service.datasets.spec import ImportRequest, ImportSpec
from service.problems import BadContent, Conflict, Invalid
from service.storage.tables import Dataset, Job, new_id

log = logging.getLogger("service.imports")

OFF = "server-side import is off: the operator allows it by setting IMPORT_ROOT"
LINK_OUT = "a symbolic link to outside IMPORT_ROOT"
LINKED_FOLDER = "a symbolically linked folder: not followed"
NOT_REGULAR = "not a regular file (a pipe, socket or device): not read"
READ_CHUNK = 1024 * 1024  # bytes read between two looks at should_stop


class NotRegular(Exception):
    """The path is not a regular file: reading it could block, or never end."""


class Stopped(Exception):
    """The job was asked to stop in the middle of reading a file."""


def _never() -> bool:
    return False


# -- the API: check the path, queue the job ---------------------------------------------------


def import_root(settings: Settings) -> Path:
    """IMPORT_ROOT's real path; Conflict when import is off or the root is missing."""
    if settings.import_root is None:
        raise Conflict(OFF)
    root = settings.import_root.resolve()
    if not root.is_dir():
        raise Conflict(f"IMPORT_ROOT {str(settings.import_root)!r} is not a directory")
    return root


def resolve_directory(root: Path, path: str) -> Path:
    """The real directory `path` (relative to `root`, or absolute) names; Invalid, naming
    `path`, for one outside `root` after every symlink is followed, or not a directory."""
    requested = Path(path)
    if ".." in requested.parts:
        raise Invalid(f"{path!r} contains '..'", field=("path",))
    real = (requested if requested.is_absolute() else root / requested).resolve()
    if not real.is_relative_to(root):
        raise Invalid(f"{path!r} is outside IMPORT_ROOT", field=("path",))
    if not real.is_dir():
        raise Invalid(f"{path!r} is not a directory under IMPORT_ROOT", field=("path",))
    return real


def submit_import(session: Session, settings: Settings, request: ImportRequest) -> Job:
    """Queue an import job of the directory the request names. Growing a dataset, it does not
    wait for the jobs that use it: each trains on the version it named."""
    directory = resolve_directory(import_root(settings), request.path)
    if request.dataset_id is not None:
        datasets.get_dataset(session, request.dataset_id)
    spec = ImportSpec(**request.model_dump(), directory=str(directory))
    # Growing a dataset, the job holds it against deletion as a training job does; creating
    # one, its `dataset_id` is set when the dataset is stored.
    return jobs.queue_job(
        session,
        kind=IMPORT.name,
        name=f"import-{directory.name}",
        spec=spec,
        dataset_id=spec.dataset_id,
    )


# -- the worker: pass 1, then pass 2 in the job's last transaction -------------------------


def list_files(directory: Path, limits: Limits) -> list[tuple[Path, tuple[str, ...]]]:
    """Every file under `directory` (and every symlinked folder, to skip) in path order."""
    entries = sorted(_walk(directory), key=lambda entry: entry[1])
    if len(entries) > limits.max_files:
        raise BadArchive(f"the folder has {len(entries)} files; the limit is {limits.max_files}")
    return entries


def check_file(
    root: Path,
    path: Path,
    parts: tuple[str, ...],
    cap: int,
    should_stop: Callable[[], bool] = _never,
) -> Checked:
    """Pass 1's verdict on one file: skipped (with why) when a link leads out of `root`, it is
    no regular file or not an image; its key is its real path, which pass 2 reads again.
    Stopped when `should_stop` says so while it is read."""
    shown = "/".join(parts)
    if path.is_symlink() and path.is_dir():
        return Checked(path, shown, parts, reason=LINKED_FOLDER)
    real = path.resolve()
    if not real.is_relative_to(root):
        return Checked(path, shown, parts, reason=LINK_OUT)
    try:
        data = _read(real, cap, should_stop)
    except NotRegular:
        return Checked(path, shown, parts, reason=NOT_REGULAR)
    facts, reason = check_image(data, cap)
    return Checked(real, shown, parts, facts, reason)


def _walk(directory: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    # followlinks=False: a symlinked folder is listed (to be skipped), never entered.
    for top, folders, files in os.walk(directory, followlinks=False):
        here = Path(top)
        # Never entered: what an OS adds (`.git/`, `__MACOSX/`), as a zip's is left out.
        folders[:] = [name for name in folders if not is_os_junk((name,))]
        names = files + [name for name in folders if (here / name).is_symlink()]
        for name in names:
            parts = PurePosixPath(here.relative_to(directory).as_posix(), name).parts
            parts = tuple(part for part in parts if part != ".")
            if not is_os_junk(parts):
                yield here / name, parts


def _read(path: Path, cap: int, should_stop: Callable[[], bool] = _never) -> bytes | None:
    """The file's bytes, or None past `cap`; never through a link swapped in since it was
    resolved (O_NOFOLLOW). An unreadable file reads as empty: it is skipped as no image.

    NotRegular for anything but a regular file: opening a FIFO for reading waits for a
    writer, forever, and a device may never end. lstat refuses it before any open (opening
    some devices does something); O_NONBLOCK keeps the open from waiting should one be
    swapped in after that look, and fstat refuses what was actually opened. Read in chunks,
    asking `should_stop` between them (Stopped): a cancel ends even a long read of a slow disk.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise NotRegular(path)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        descriptor = os.open(path, flags)
    except OSError:
        return b""
    with os.fdopen(descriptor, "rb", buffering=0) as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise NotRegular(path)
        chunks: list[bytes] = []
        size = 0
        while size <= cap:
            if should_stop():
                raise Stopped(path)
            chunk = file.read(min(READ_CHUNK, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return None if size > cap else b"".join(chunks)


def _reread(path: Path, cap: int) -> bytes | None:
    # Pass 2: a file that is no longer regular has changed since pass 1 (`verified` says so).
    try:
        return _read(path, cap)
    except NotRegular:
        return None


def scan_directory(
    spec: ImportSpec,
    settings: Settings,
    limits: Limits,
    *,
    on_progress: Callable[[int, int], None],
    should_stop: Callable[[], bool],
) -> Plan | None:
    """Pass 1, reporting (files checked, files found) after each; None when asked to stop.
    BadContent when the folder as a whole cannot be imported."""
    root = import_root(settings)
    directory = resolve_directory(root, spec.path)  # the root may have moved since
    try:
        entries = list_files(directory, limits)
    except BadArchive as error:
        raise BadContent(f"{spec.path}: {error}") from None
    checked = []
    for done, (path, parts) in enumerate(entries, 1):
        if should_stop():
            return None
        try:
            checked.append(check_file(root, path, parts, limits.max_image_bytes, should_stop))
        except Stopped:
            return None
        on_progress(done, len(entries))
    plan = plan_images(checked)
    try:
        require_classes(plan.class_counts, at_least=1 if spec.dataset_id else 2)
    except BadArchive as error:
        raise BadContent(f"{spec.path}: {error}") from None
    return plan


def read_images(images: Iterable[Planned], cap: int) -> Iterator[tuple[Planned, bytes]]:
    """Pass 2: each image's bytes again, one at a time; BadArchive if one changed since."""
    for image in images:
        yield image, verified(image, _reread(image.key, cap))


def store_import(
    session: Session, claim: jobs.Claim, spec: ImportSpec, plan: Plan, *, cap: int
) -> None:
    """Create the dataset (or lock the one to grow), insert the images, and record the
    dataset on the job (`jobs.dataset_id`, so GET /jobs/{id} names it)."""
    if spec.dataset_id is None:
        dataset = Dataset(
            id=new_id("d"),
            name=spec.name or Path(spec.directory).name or "import",
            num_images=0,
            classes=[],
            skipped=plan.skipped,
        )
        session.add(dataset)
        session.flush()
        new, restored = plan.images, []
    else:
        dataset = datasets.locked_dataset(session, spec.dataset_id)
        new, restored, _ = datasets.unseen_images(session, dataset, plan.images)
        dataset.skipped = [*dataset.skipped, *plan.skipped]
    try:
        contents = read_images(new, cap)
        datasets.add_images(session, dataset, contents, source="import", restored=restored)
    except BadArchive as error:  # a file changed since pass 1: the job fails, nothing stored
        raise BadContent(f"{spec.path}: {error}") from None
    job = session.get(Job, claim.job_id)
    assert job is not None  # the caller just marked it succeeded
    job.dataset_id = dataset.id
    session.flush()
