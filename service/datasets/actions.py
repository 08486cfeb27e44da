"""The health report's findings as edits: what each action would change, shown before it is
applied, and applied as one edit (POST /datasets/{id}/edits) like any other.

- `remove-duplicates`: of each group of byte-identical images, keep the first (lowest id) and
  remove the others.
- `remove-leakage`: remove the validation-side image of each copy that straddles the split
  the report was asked about (seed, validation_split).
- `accept-suggestions`: relabel each image the stored label review finds likely mislabelled
  to the class it suggests (only where the version still labels it as the review saw it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.orm import Session

from service.datasets import versions
from service.datasets.report import dataset_report
from service.datasets.schemas import DatasetReport, ReportImage
from service.datasets.service import get_dataset
from service.datasets.spec import DatasetEdit, Relabel


class ReportAction(StrEnum):
    REMOVE_DUPLICATES = "remove-duplicates"
    REMOVE_LEAKAGE = "remove-leakage"
    ACCEPT_SUGGESTIONS = "accept-suggestions"


@dataclass(frozen=True)
class Proposal:
    """An action's edit, and the report it was made from (which names the edit's images)."""

    edit: DatasetEdit
    report: DatasetReport


def propose(
    session: Session,
    dataset_id: str,
    action: ReportAction,
    *,
    seed: int,
    validation_split: float,
    version: int | None,
) -> Proposal:
    """The edit `action` makes of the report on `version` (latest when None), against that
    version (`base_version`: applying it after the dataset moved on is a 409)."""
    dataset = get_dataset(session, dataset_id)
    reported = versions.get_version(session, dataset, version)
    report = dataset_report(
        session,
        dataset_id,
        seed=seed,
        validation_split=validation_split,
        input_size=None,
        version=reported.number,
    )
    if action is ReportAction.REMOVE_DUPLICATES:
        edit = _remove_duplicates(report)
    elif action is ReportAction.REMOVE_LEAKAGE:
        edit = _remove_leakage(report)
    else:
        edit = _accept_suggestions(session, reported.id, report)
    return Proposal(edit.model_copy(update={"base_version": reported.number}), report)


def _remove_duplicates(report: DatasetReport) -> DatasetEdit:
    extra = [image.id for group in report.duplicates.exact for image in _sorted(group.images)[1:]]
    return DatasetEdit(
        delete=sorted(set(extra)),
        message=f"removed {len(set(extra))} exact duplicates, keeping one of each",
    )


def _remove_leakage(report: DatasetReport) -> DatasetEdit:
    leaked = sorted({pair.validation.id for pair in report.leakage.pairs})
    leakage = report.leakage
    return DatasetEdit(
        delete=leaked,
        message=f"removed {len(leaked)} validation images with a copy in training "
        f"(seed {leakage.seed}, validation_split {leakage.validation_split})",
    )


def _accept_suggestions(session: Session, version_id: int, report: DatasetReport) -> DatasetEdit:
    review = report.mislabelled.review
    issues = review.issues if review is not None else []
    # The review was made on some version: only images this one still labels as it saw them.
    held = versions.manifest_labels(session, version_id, [issue.image_id for issue in issues])
    relabel = [
        Relabel(image_id=issue.image_id, label=issue.suggested)
        for issue in issues
        if held.get(issue.image_id) == issue.label
    ]
    return DatasetEdit(
        relabel=relabel,
        message=f"accepted {len(relabel)} suggested labels from the label review",
    )


def _sorted(images: list[ReportImage]) -> list[ReportImage]:
    return sorted(images, key=lambda image: image.id)
