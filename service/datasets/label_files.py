"""A multi-label dataset's labels, read from the file at the top of its zip.

Class folders give each image one label. Several labels per image come in a file beside the
images instead (Vertex AI and Azure take the same two shapes):

- `labels.csv`: the header `filename,labels`, then one row per image, its labels separated by
  `;` (an empty field: none of them), e.g. `photos/1.jpg,dog;cat`;
- `labels.jsonl`: one JSON object per line, `{"file": "photos/1.jpg", "labels": ["dog", "cat"]}`.

Paths are the images' paths inside the zip. An image's labels are kept as one canonical
string, sorted and joined by LABEL_SEPARATOR: what a version's manifest stores per image.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence

import numpy as np

from service.storage.tables import LABEL_SEPARATOR, NAME_LENGTH

LABEL_FILES = ("labels.csv", "labels.jsonl")
# A labels file of this size lists millions of images: past it, it is not one.
MAX_LABEL_FILE_BYTES = 64 * 1024 * 1024


class BadLabelFile(ValueError):
    """The labels file cannot be read; the message names the line and what was expected."""


def label_set(labels: Iterable[str], where: str) -> str:
    """The canonical string of an image's labels: stripped, de-duplicated, sorted, joined."""
    names = sorted({label.strip() for label in labels})
    for name in names:
        if not name:
            raise BadLabelFile(f"{where}: an empty label")
        if LABEL_SEPARATOR in name:
            raise BadLabelFile(f"{where}: label {name!r} contains {LABEL_SEPARATOR!r}")
    joined = LABEL_SEPARATOR.join(names)
    if len(joined) > NAME_LENGTH:
        raise BadLabelFile(
            f"{where}: the labels take {len(joined)} characters together; at most {NAME_LENGTH}"
        )
    return joined


def split_labels(joined: str) -> list[str]:
    """An image's labels from its canonical string ("" → none)."""
    return joined.split(LABEL_SEPARATOR) if joined else []


def labels_of(label: str, multi_label: bool) -> list[str]:
    """The classes a manifest's label stands for: itself, or a multi-label image's labels."""
    return split_labels(label) if multi_label else [label]


def label_counts(counted: Iterable[tuple[str, int]], multi_label: bool) -> dict[str, int]:
    """Images per class, by name, from (manifest label, images) pairs; multi-label, images per
    label, an image counted under each of its labels (and under none when it has none)."""
    counts: dict[str, int] = {}
    for label, images in counted:
        for name in labels_of(label, multi_label):
            counts[name] = counts.get(name, 0) + images
    return dict(sorted(counts.items()))


def is_label_file(name: str, data: bytes) -> bool:
    """Whether the file at the zip's top labels its images: any `labels.jsonl`; a
    `labels.csv` whose first line is the header `filename,labels`. Before multi-label
    datasets a `labels.csv` beside class folders was a stray file, skipped: one of another
    shape still is."""
    if name.endswith(".jsonl"):
        return True
    first = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace")
    return [field.strip().lower() for field in first.split(",")] == ["filename", "labels"]


def label_matrix(labels: Sequence[str], classes: list[str], multi_label: bool) -> np.ndarray:
    """What training learns from a manifest's labels: each image's class index (int32 [n]);
    multi-label, row i 1 under each label image i holds (float32 [n, classes])."""
    index = {name: number for number, name in enumerate(classes)}
    if not multi_label:
        return np.array([index[label] for label in labels], dtype=np.int32)
    matrix = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, joined in enumerate(labels):
        matrix[row, [index[name] for name in split_labels(joined)]] = 1.0
    return matrix


def read_label_file(name: str, data: bytes, max_rows: int) -> dict[str, str]:
    """Each listed path → its canonical label string; BadLabelFile naming the line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BadLabelFile(f"{name} is not UTF-8 text ({error})") from None
    rows = _csv_rows(name, text) if name.endswith(".csv") else _jsonl_rows(name, text)
    listed: dict[str, str] = {}
    for line, path, labels in rows:
        where = f"{name} line {line}"
        if len(listed) >= max_rows:
            raise BadLabelFile(f"{name} lists more than {max_rows} images")
        path = path.strip().removeprefix("./")
        if not path:
            raise BadLabelFile(f"{where}: no file name")
        if path in listed:
            raise BadLabelFile(f"{where}: {path!r} is listed twice")
        listed[path] = label_set(labels, where)
    return listed


def _csv_rows(name: str, text: str) -> Iterable[tuple[int, str, list[str]]]:
    reader = csv.reader(io.StringIO(text))
    next(reader, None)  # the header, checked by `is_label_file`
    for row in reader:
        if not row:
            continue
        if len(row) != 2:
            raise BadLabelFile(
                f"{name} line {reader.line_num}: expected 2 fields (filename,labels), "
                f"got {len(row)}"
            )
        yield reader.line_num, row[0], [label for label in row[1].split(LABEL_SEPARATOR) if label]


def _jsonl_rows(name: str, text: str) -> Iterable[tuple[int, str, list[str]]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise BadLabelFile(f"{name} line {number}: not JSON ({error.msg})") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("file"), str)
            or not isinstance(row.get("labels"), list)
            or not all(isinstance(label, str) for label in row["labels"])
        ):
            raise BadLabelFile(
                f'{name} line {number}: expected {{"file": "…", "labels": ["…", …]}}'
            )
        yield number, row["file"], row["labels"]
