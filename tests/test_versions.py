"""Dataset versions and edits: every change a new immutable version (a manifest; image bytes
stored once), edits all or nothing, the diff between two versions, jobs that train on the
version they named while the dataset changes, a model's lineage, and the migration that makes
existing datasets their version 1."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from sqlalchemy import column, delete, insert, select, table, update

from service.storage.db import Database
from service.storage.tables import (
    Dataset,
    DatasetImage,
    Job,
    TrainedModel,
    VersionImage,
    utcnow,
)
from tests.conftest import (
    LIGHT,
    SQLITE_ONLY,
    Service,
    class_zip,
    colour_images,
    count_rows,
    job_body,
    stored_model,
)


def images_of(service: Service, dataset_id: str, version: int | None = None) -> dict[int, str]:
    query = f"?limit=500&version={version}" if version else "?limit=500"
    listed = service.client.get(f"/datasets/{dataset_id}/images{query}")
    assert listed.status_code == 200, listed.text
    return {row["id"]: row["label"] for row in listed.json()}


def append(service: Service, dataset_id: str, images: dict[str, list[bytes]]) -> dict[str, Any]:
    files = {"file": ("more.zip", class_zip(images), "application/zip")}
    response = service.client.post(f"/datasets/{dataset_id}/images", files=files)
    assert response.status_code == 200, response.text
    return response.json()


def edit(service: Service, dataset_id: str, **body: Any) -> Any:
    return service.client.post(f"/datasets/{dataset_id}/edits", json=body)


def test_every_change_is_a_version_and_the_diff_names_what_changed(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=2))
    assert dataset["version"] == 1
    first = images_of(service, dataset["id"])
    appended = append(service, dataset["id"], {"red": colour_images(1, seed=5)["red"]})
    assert appended["dataset"]["version"] == 2 and appended["dataset"]["num_images"] == 7
    stored = count_rows(service, DatasetImage)
    red, blue = (
        sorted(i for i, label in first.items() if label == "red")[0],
        min(i for i, label in first.items() if label == "blue"),
    )
    made = edit(
        service,
        dataset["id"],
        relabel=[{"image_id": red, "label": "purple"}],
        delete=[blue],
        message="one red is purple; a blue goes",
    )
    assert made.status_code == 201, made.text
    version = made.json()
    assert version["number"] == 3 and version["source"] == "edit"
    assert version["message"] == "one red is purple; a blue goes"
    assert version["num_images"] == 6
    counts = {entry["name"]: entry["count"] for entry in version["classes"]}
    assert counts == {"blue": 1, "green": 2, "purple": 1, "red": 2}
    assert count_rows(service, DatasetImage) == stored  # no image bytes copied

    listed = service.client.get(f"/datasets/{dataset['id']}/versions").json()
    assert [(v["number"], v["source"]) for v in listed] == [
        (1, "upload"),
        (2, "append"),
        (3, "edit"),
    ]
    assert service.client.get(f"/datasets/{dataset['id']}/versions/2").json() == listed[1]
    assert service.client.get(f"/datasets/{dataset['id']}").json()["version"] == 3
    # Older versions are as they were: their images, their labels.
    assert images_of(service, dataset["id"], 1) == first
    latest = images_of(service, dataset["id"])
    assert blue not in latest and latest[red] == "purple"

    diff = service.client.get(f"/datasets/{dataset['id']}/versions/1/diff/3").json()
    [added] = diff["added"]
    assert added["label"] == "red" and added["id"] not in first
    assert [(d["id"], d["label"]) for d in diff["removed"]] == [(blue, "blue")]
    [relabelled] = diff["relabelled"]
    assert (relabelled["id"], relabelled["from_label"], relabelled["to_label"]) == (
        red,
        "red",
        "purple",
    )
    assert diff["counts"] == {"added": 1, "removed": 1, "relabelled": 1}
    back = service.client.get(f"/datasets/{dataset['id']}/versions/3/diff/1").json()
    assert back["counts"] == {"added": 1, "removed": 1, "relabelled": 1}
    assert service.client.get(f"/datasets/{dataset['id']}/versions/9").status_code == 404


def test_an_edit_is_all_or_nothing_and_names_the_first_bad_entry(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=2))
    ids = sorted(images_of(service, dataset["id"]))
    good = {"image_id": ids[0], "label": "teal"}
    refusals = [
        (
            {"relabel": [good, {"image_id": 999_999, "label": "x"}]},
            ["body", "relabel", 1, "image_id"],
        ),
        ({"relabel": [good], "delete": [ids[0]]}, ["body", "delete", 0]),
        ({"relabel": [{"image_id": ids[1], "label": "a/b"}]}, ["body", "relabel", 0, "label"]),
        ({"delete": ids[2:]}, ["body", "delete"]),  # one class left
        ({}, ["body", "relabel"]),
    ]
    for body, location in refusals:
        refused = edit(service, dataset["id"], **body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.json()["detail"][0]["loc"] == location, refused.text
    stale = edit(service, dataset["id"], delete=[ids[0]], base_version=2)
    assert stale.status_code == 409 and "latest is now 1" in stale.json()["detail"]
    assert edit(service, "d_missing", delete=[ids[0]]).status_code == 404
    assert len(service.client.get(f"/datasets/{dataset['id']}/versions").json()) == 1
    assert count_rows(service, VersionImage) == 6  # nothing written
    assert edit(service, dataset["id"], delete=[ids[0]], base_version=1).status_code == 201


def test_one_image_relabelled_and_deleted_by_its_own_path(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=2))
    ids = sorted(images_of(service, dataset["id"]))
    patched = service.client.patch(
        f"/datasets/{dataset['id']}/images/{ids[0]}", json={"label": "cats"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["id"] == ids[0] and patched.json()["label"] == "cats"
    names = [c["name"] for c in service.client.get(f"/datasets/{dataset['id']}").json()["classes"]]
    assert "cats" in names  # a new label makes a new class
    assert service.client.delete(f"/datasets/{dataset['id']}/images/{ids[1]}").status_code == 204
    assert ids[1] not in images_of(service, dataset["id"])
    # Gone from the latest version, still stored for the versions that hold it.
    assert service.client.get(f"/datasets/{dataset['id']}/images/{ids[1]}").status_code == 200
    missing = service.client.delete(f"/datasets/{dataset['id']}/images/{ids[1]}")
    assert missing.status_code == 404 and "not in version 3" in missing.json()["detail"]
    bad = service.client.patch(f"/datasets/{dataset['id']}/images/{ids[2]}", json={"label": ""})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "label"]


def test_an_append_restores_an_image_an_edit_removed_without_storing_it_again(
    service: Service,
) -> None:
    images = colour_images(per_class=2)
    dataset = service.upload(images)
    removed = min(i for i, label in images_of(service, dataset["id"]).items() if label == "red")
    assert edit(service, dataset["id"], delete=[removed]).status_code == 201
    stored = count_rows(service, DatasetImage)
    appended = append(service, dataset["id"], {"red": images["red"]})
    assert appended["added"] == [{"name": "red", "count": 1}]
    assert len(appended["skipped"]) == 1  # the other red one: still in the latest version
    assert count_rows(service, DatasetImage) == stored
    assert images_of(service, dataset["id"])[removed] == "red"


@SQLITE_ONLY
@pytest.mark.slow
def test_a_job_trains_on_the_version_it_named_while_the_dataset_changes(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=4))
    training = {"validation_split": 0.25}
    body = job_body(dataset["id"], backbone=LIGHT, freeze={"mode": "backbone"}, training=training)
    queued = service.client.post("/jobs", json=body)
    assert queued.status_code == 202, queued.text
    assert queued.json()["spec"]["dataset_version"] == 1  # the latest, recorded
    # Neither waits for the job (no 409); neither changes what it trains on.
    append(service, dataset["id"], {"yellow": colour_images(3, seed=9)["red"]})
    ids = sorted(images_of(service, dataset["id"]))
    assert edit(service, dataset["id"], delete=ids[:2]).status_code == 201
    assert service.worker.run_until_idle() == 1
    job = service.client.get(f"/jobs/{queued.json()['id']}").json()
    assert job["status"] == "succeeded", job
    model = service.client.get(f"/models/{job['model_id']}").json()
    assert (model["dataset_id"], model["dataset_version"]) == (dataset["id"], 1)
    assert model["classes"] == ["blue", "green", "red"]  # not version 2's yellow
    samples = service.client.get(f"/models/{model['id']}/evaluation/samples").json()
    first = images_of(service, dataset["id"], 1)
    assert samples and all(first[s["image_id"]] == s["label"] for s in samples)

    old = service.client.post("/jobs", json={**body, "dataset_version": 3})
    assert old.status_code == 202 and old.json()["spec"]["dataset_version"] == 3
    missing = service.client.post("/jobs", json={**body, "dataset_version": 4})
    assert missing.status_code == 404 and "has no version 4" in missing.json()["detail"]


def test_the_migration_makes_each_dataset_its_version_1(database_url: str) -> None:
    """Existing datasets become their version 1 (labels as uploaded), their models and
    training jobs point at it; downgrading keeps each dataset as its latest version."""
    database = Database(database_url)
    config = database.alembic_config()
    command.upgrade(config, "0012")
    classes = [{"name": "a", "count": 1}, {"name": "b", "count": 1}]
    with database.session(write=True) as session:
        # The columns of revision 0012 alone: the ORM's row would name later ones.
        old = {"id": "d_old", "name": "old", "num_images": 2, "classes": classes, "skipped": []}
        columns = [column(name, Dataset.__table__.c[name].type) for name in [*old, "created_at"]]
        datasets = table("datasets", *columns)
        session.execute(insert(datasets).values(created_at=utcnow(), **old))
        session.flush()
        for image_id, label in ((1, "a"), (2, "b")):
            image = DatasetImage(id=image_id, dataset_id="d_old", uploaded_label=label)
            image.filename, image.data, image.size_bytes = f"{label}/x.png", b"x", 1
            session.add(image)
        session.add(stored_model(None, id="m_old", dataset_id="d_old"))
        spec = job_body("d_old")
        session.add(Job(id="j_old", name="old", status="queued", spec=spec, dataset_id="d_old"))
    command.upgrade(config, "head")
    with database.session(write=True) as session:
        assert session.scalar(select(Dataset.version).where(Dataset.id == "d_old")) == 1
        manifest = session.execute(select(VersionImage.image_id, VersionImage.label)).all()
        assert sorted(manifest) == [(1, "a"), (2, "b")]
        lineage = select(TrainedModel.dataset_version).where(TrainedModel.id == "m_old")
        assert session.scalar(lineage) == 1
        assert session.scalar(select(Job.spec).where(Job.id == "j_old"))["dataset_version"] == 1
        # A later version: image 1 relabelled, image 2 left out.
        session.execute(update(VersionImage).where(VersionImage.image_id == 1).values(label="b"))
        session.execute(delete(VersionImage).where(VersionImage.image_id == 2))
    command.downgrade(config, "0012")
    with database.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT id, label FROM dataset_images").all()
    assert [tuple(row) for row in rows] == [(1, "b")]
    database.dispose()
