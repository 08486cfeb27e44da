"""Reading an uploaded zip of class folders (the layout of `image_dataset_from_directory`).

No database and no HTTP here: it returns the images, or raises `BadArchive` saying why the
whole upload is refused. Files that are not images are skipped and listed, not fatal.

Two passes keep memory flat whatever the zip's size: `scan_zip` reads and decodes every
member once and keeps only its verdict (path, facts, or why it is skipped), because the
class-folder layout is decided by all image paths; `zip_images` then reads the kept images
again one at a time for the caller to store in bounded batches (service/datasets/service.py).
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any

from service.datasets.label_files import (
    LABEL_FILES,
    MAX_LABEL_FILE_BYTES,
    BadLabelFile,
    is_label_file,
    label_counts,
    read_label_file,
)
from service.ml.images import (
    PHASH_SIDE,
    ImageFacts,
    UndecodableImage,
    decode,
    decoding,
    image_facts,
)

# What operating systems add when they compress a folder: left out silently, not "skipped".
# (Dot-files and dot-folders — `.DS_Store`, `._1.jpg`, `.git/` — are left out too.)
OS_JUNK_FOLDERS = frozenset({"__macosx"})
OS_JUNK_FILES = frozenset({"thumbs.db", "desktop.ini"})
# Past this many bytes, an entry that inflates to more than MAX_RATIO × its compressed size
# is a zip bomb: real photos barely compress.
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20


class BadArchive(ValueError):
    """The upload as a whole is refused (HTTP 400); the message says why."""


@dataclass(frozen=True)
class Limits:
    max_files: int
    max_image_bytes: int
    max_total_bytes: int


@dataclass
class ArchiveImage:
    label: str
    filename: str
    data: bytes
    facts: ImageFacts


@dataclass
class Archive:
    images: list[ArchiveImage] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def class_counts(self) -> dict[str, int]:
        return count_labels(image.label for image in self.images)


def member_parts(name: str) -> tuple[str, ...]:
    """The path's parts; BadArchive for a path that could land outside the archive."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BadArchive(f"unsafe path in zip: {name!r} is absolute")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise BadArchive(f"unsafe path in zip: {name!r} contains '..'")
    return parts


def is_os_junk(parts: tuple[str, ...]) -> bool:
    """Metadata an OS put there, not something the person meant to upload."""
    return (
        any(part.startswith(".") or part.lower() in OS_JUNK_FOLDERS for part in parts)
        or parts[-1].lower() in OS_JUNK_FILES
    )


Entry = tuple[zipfile.ZipInfo, tuple[str, ...]]


def archive_files(archive: zipfile.ZipFile, limits: Limits) -> list[Entry]:
    """Every file to look at, in path order; BadArchive for what makes the whole zip unsafe."""
    infos = archive.infolist()
    if len(infos) > limits.max_files:
        raise BadArchive(f"zip has {len(infos)} entries; the limit is {limits.max_files}")
    files = []
    seen: set[str] = set()
    for info in infos:
        parts = member_parts(info.filename)
        if info.is_dir() or not parts:
            continue
        if info.filename in seen:
            raise BadArchive(f"zip holds {info.filename!r} twice")
        seen.add(info.filename)
        if not is_os_junk(parts):
            files.append((info, parts))
    return sorted(files, key=lambda entry: entry[1])


def class_folder_depth(image_paths: list[tuple[str, ...]]) -> int:
    """How many leading folders to drop so that the first part left names the class.

    Only images decide, as in `image_dataset_from_directory`. The top folder is dropped when
    every image that sits in a folder sits in that one (`pets/cats/1.jpg` → class `cats`),
    some deeper than its top: so a README or a cover picture beside the class folders does
    not make `pets` the one class. Kept, one top folder could only ever be one class, which
    is never a dataset, so dropping it turns no valid upload into a different one.
    """
    in_folders = [parts for parts in image_paths if len(parts) >= 2]
    tops = {parts[0] for parts in in_folders}
    if len(tops) == 1 and any(len(parts) >= 3 for parts in in_folders):
        return 1
    return 0


@dataclass
class Inflated:
    """Every byte the zip has inflated to so far, kept or not, against the upload's limit."""

    limit: int
    total: int = 0

    def add(self, count: int) -> None:
        self.total += count
        if self.total > self.limit:
            raise BadArchive(f"zip unpacks to more than {self.limit} bytes")


def read_capped(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, inflated: Inflated
) -> bytes | None:
    """The member's bytes, or None past `cap` — counted while reading, not from the header."""
    chunks = []
    total = 0
    with archive.open(info) as member:
        while chunk := member.read(1 << 20):
            total += len(chunk)
            inflated.add(len(chunk))
            if total > RATIO_FLOOR and total > MAX_RATIO * max(info.compress_size, 1):
                raise BadArchive(
                    f"{info.filename!r} inflates to over {MAX_RATIO}× its compressed size "
                    "(a zip bomb?)"
                )
            if total > cap:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Checked:
    """Pass 1's verdict on one file: its facts if it decodes as an image, else why not.

    `key` is what pass 2 reads again (a zip member's ZipInfo, a file's Path); the bytes are
    not kept, so a scan's memory grows with the number of files, not their size.
    """

    key: Any
    path: str
    parts: tuple[str, ...]
    facts: ImageFacts | None = None
    reason: str = ""


@dataclass(frozen=True)
class Planned:
    """An image to store: where to read it again, its class, its name and its facts."""

    key: Any
    path: str
    label: str
    filename: str
    facts: ImageFacts


@dataclass
class Plan:
    """The images of an upload or a directory, decided but not read: pass 2 reads them."""

    images: list[Planned] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    multi_label: bool = False  # labelled by a labels file (label_files.py), not by folders

    @property
    def class_counts(self) -> dict[str, int]:
        return count_labels((image.label for image in self.images), self.multi_label)


def count_labels(labels: Iterable[str], multi_label: bool = False) -> dict[str, int]:
    """Images per class (`label_counts`), one image per label given."""
    return label_counts(((label, 1) for label in labels), multi_label)


def check_image(data: bytes | None, cap: int) -> tuple[ImageFacts | None, str]:
    """The facts of bytes that decode as an image, or why they are skipped."""
    if data is None:
        return None, f"larger than the {cap}-byte image limit"
    # One decode slot for the decode and the facts made of its pixels (ml/images.py).
    with decoding():
        try:
            # The name says nothing: a JPEG called .png is an image, a .jpg may not be.
            # Reduced to the hash's size: a JPEG's every byte is still decoded, so a truncated
            # or corrupt one is refused as at full size, at a fraction of a full decode.
            image = decode(data, reduce_to=PHASH_SIDE)
        except UndecodableImage as error:
            return None, str(error)
        # Measured from this decode: the health report's facts cost no second one.
        return image_facts(data, image), ""


def _check_member(
    archive: zipfile.ZipFile, entry: Entry, limits: Limits, inflated: Inflated
) -> Checked:
    info, parts = entry
    try:
        data = read_capped(archive, info, limits.max_image_bytes, inflated)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
        return Checked(info, info.filename, parts, reason=f"corrupt entry: {error}")
    facts, reason = check_image(data, limits.max_image_bytes)
    return Checked(info, info.filename, parts, facts, reason)


def plan_images(
    checked: Iterable[Checked], *, labelled: bool = True, listed: LabelFile | None = None
) -> Plan:
    """Class folders decided by every image's path (`class_folder_depth`); the rest skipped.
    Not `labelled` (an unlabelled pool): every image, wherever it sits, with no label. With
    a labels file (`listed`), each image's labels are the file's."""
    members = list(checked)
    if not labelled:
        return _unlabelled(members)
    if listed is not None:
        return _listed(members, listed)
    depth = class_folder_depth([member.parts for member in members if member.facts is not None])
    plan = Plan()
    for member in members:
        inside = member.parts[depth:]
        if member.facts is None:
            plan.skipped.append({"path": member.path, "reason": member.reason})
        elif len(inside) < 2:
            plan.skipped.append({"path": member.path, "reason": "not inside a class folder"})
        else:
            plan.images.append(
                Planned(member.key, member.path, inside[0], "/".join(inside), member.facts)
            )
    return plan


@dataclass(frozen=True)
class LabelFile:
    name: str
    labels: dict[str, str]  # an image's path in the zip → its canonical label string


def _listed(members: list[Checked], listed: LabelFile) -> Plan:
    plan = Plan(multi_label=True)
    for member in members:
        path = "/".join(member.parts)
        if member.facts is None:
            plan.skipped.append({"path": member.path, "reason": member.reason})
        elif path not in listed.labels:
            plan.skipped.append({"path": member.path, "reason": f"not listed in {listed.name}"})
        else:
            plan.images.append(
                Planned(member.key, member.path, listed.labels[path], path, member.facts)
            )
    present = {"/".join(member.parts) for member in members}
    for path in listed.labels.keys() - present:
        reason = f"listed in {listed.name}, not in the zip"
        plan.skipped.append({"path": path, "reason": reason})
    return plan


def _unlabelled(members: list[Checked]) -> Plan:
    plan = Plan()
    for member in members:
        if member.facts is None:
            plan.skipped.append({"path": member.path, "reason": member.reason})
        else:
            filename = "/".join(member.parts)
            plan.images.append(Planned(member.key, member.path, "", filename, member.facts))
    return plan


def open_zip(file: IO[bytes], limits: Limits) -> zipfile.ZipFile:
    """The zip, its directory read; BadArchive if it is not one, or if it holds more than
    `limits.max_files` entries, told before its directory is read (`check_entry_count`)."""
    check_entry_count(file, limits.max_files)
    try:
        return zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise BadArchive("file is not a zip archive") from None


# The zip format's end records (APPNOTE.TXT 4.3.14–4.3.16), as `zipfile` reads them.
_END = struct.Struct("<4s4H2LH")  # signature, disks, entries here, entries, size, offset
_END_SIGNATURE = b"PK\x05\x06"
_END64 = struct.Struct("<4sQ2H2L4Q")  # … entries here, entries, size, offset
_END64_SIGNATURE = b"PK\x06\x06"
_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, offset of the zip64 end record, disks
_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ENTRY_SIGNATURE = b"PK\x01\x02"  # what starts every entry of the central directory
_MAX_COMMENT = 0xFFFF
_CHUNK = 1 << 20


def check_entry_count(file: IO[bytes], max_files: int) -> None:
    """BadArchive for a zip of more than `max_files` entries, before `zipfile` reads its
    directory (300,000 empty entries in 27 MB cost it 3 s and 156 MB before the count could
    be checked). First the count the end record declares (the zip64 one's when there is
    one); then, since `zipfile` reads every entry of the directory whatever that says, the
    entry signatures in the directory's bytes, counted a chunk at a time: every entry
    starts with one, so there are no more entries than signatures. Not a zip: left to
    `zipfile` to say so."""
    found = _directory(file)
    file.seek(0)
    if found is None:
        return
    declared, start, size = found
    if declared > max_files:
        raise BadArchive(f"zip has {declared} entries; the limit is {max_files}")
    if _count_signatures(file, start, size, stop_past=max_files) > max_files:
        raise BadArchive(f"zip has over {max_files} entries; the limit is {max_files}")
    file.seek(0)


def _directory(file: IO[bytes]) -> tuple[int, int, int] | None:
    """(entries declared, where the central directory starts, its size), found as `zipfile`
    finds them: the end record at the end, or else before a comment of up to 64 KiB."""
    end = file.seek(0, io.SEEK_END)
    tail_start = max(0, end - _END.size - _MAX_COMMENT)
    file.seek(tail_start)
    tail = file.read()
    at = tail.rfind(_END_SIGNATURE, 0, max(0, len(tail) - _END.size + 4))
    if at < 0:
        return None
    _, _, _, _, entries, size, _, _ = _END.unpack_from(tail, at)
    location = tail_start + at
    start = location - size
    zip64 = _zip64(file, location)
    if zip64 is not None:
        entries, size = zip64
        start = location - _LOCATOR.size - _END64.size - size
    return entries, start, size


def _zip64(file: IO[bytes], location: int) -> tuple[int, int] | None:
    """(entries, directory size) from the zip64 end record the locator before `location`
    points to, when there is one (a zip of over 65,535 entries or 4 GiB)."""
    if location < _LOCATOR.size + _END64.size:
        return None
    file.seek(location - _LOCATOR.size - _END64.size)
    record = file.read(_END64.size + _LOCATOR.size)
    if record[_END64.size : _END64.size + 4] != _LOCATOR_SIGNATURE:
        return None
    if record[:4] != _END64_SIGNATURE:
        return None
    fields = _END64.unpack_from(record)
    return fields[7], fields[8]  # the entries on every disk, the directory's size


def _count_signatures(file: IO[bytes], start: int, size: int, *, stop_past: int) -> int:
    """Entry signatures in the `size` bytes from `start`, counted up to past `stop_past`."""
    if start < 0 or size <= 0:
        return 0
    file.seek(start)
    count, left, carry = 0, size, b""
    while left > 0 and count <= stop_past:
        chunk = file.read(min(_CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
        window = carry + chunk
        count += window.count(_ENTRY_SIGNATURE)
        # The last 3 bytes again: a signature split between chunks is counted, and once.
        carry = window[-3:]
    return count


def scan_zip(archive: zipfile.ZipFile, limits: Limits, *, labelled: bool = True) -> Plan:
    """Pass 1: every file read and decoded once, only its verdict kept.

    Every file is read and decoded before the layout is decided, so every byte the zip
    inflates to counts against the limits, wherever in the zip it lies.
    """
    inflated = Inflated(limits.max_total_bytes)
    entries = archive_files(archive, limits)
    listed = _label_file(archive, entries, limits, inflated) if labelled else None
    if listed is not None:
        entries = [entry for entry in entries if entry[1] != (listed.name,)]
    return plan_images(
        (_check_member(archive, entry, limits, inflated) for entry in entries),
        labelled=labelled,
        listed=listed,
    )


def _label_file(
    archive: zipfile.ZipFile, entries: list[Entry], limits: Limits, inflated: Inflated
) -> LabelFile | None:
    """The zip's labels file (label_files.py), at its top, read; None when it has none."""
    found = [entry for entry in entries if entry[1] in [(name,) for name in LABEL_FILES]]
    if not found:
        return None
    if len(found) > 1:
        raise BadArchive(f"zip holds both {' and '.join(LABEL_FILES)}: send one")
    info, (name,) = found[0]
    data = read_capped(archive, info, MAX_LABEL_FILE_BYTES, inflated)
    if data is None:
        raise BadArchive(f"{name} is larger than {MAX_LABEL_FILE_BYTES} bytes")
    if not is_label_file(name, data):
        return None
    try:
        return LabelFile(name, read_label_file(name, data, limits.max_files))
    except BadLabelFile as error:
        raise BadArchive(str(error)) from None


def zip_images(
    archive: zipfile.ZipFile, images: Iterable[Planned], limits: Limits
) -> Iterator[tuple[Planned, bytes]]:
    """Pass 2: each planned image's bytes, read again one at a time. BadArchive if a member
    no longer reads as it did in pass 1 (its hash is checked): never store unchecked bytes."""
    inflated = Inflated(limits.max_total_bytes)
    for image in images:
        try:
            data = read_capped(archive, image.key, limits.max_image_bytes, inflated)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
            raise BadArchive(f"{image.path!r} could not be read again: {error}") from None
        yield image, verified(image, data)


def verified(image: Planned, data: bytes | None) -> bytes:
    if data is None or hashlib.sha256(data).hexdigest() != image.facts.sha256:
        raise BadArchive(f"{image.path!r} changed while it was being read")
    return data


def read_image_zip(file: IO[bytes], limits: Limits) -> Archive:
    """The images by class folder (their bytes in memory: for small zips and tests; the
    service stores uploads with `scan_zip` and `zip_images`, one image at a time), and every
    other file with the reason it was skipped."""
    with open_zip(file, limits) as archive:
        plan = scan_zip(archive, limits)
        require_classes(plan.class_counts)
        images = [
            ArchiveImage(image.label, image.filename, data, image.facts)
            for image, data in zip_images(archive, plan.images, limits)
        ]
    return Archive(images, plan.skipped)


def require_classes(classes: dict[str, int], at_least: int = 2, multi_label: bool = False) -> None:
    if multi_label:
        if not classes:
            raise BadArchive("the labels file gives none of the zip's images a label")
        return
    if len(classes) < at_least:
        found = ", ".join(f"{name!r}" for name in classes) or "none"
        raise BadArchive(
            "a dataset needs at least 2 class folders with images "
            f"(e.g. cats/1.jpg, dogs/2.png); found {found}"
        )
