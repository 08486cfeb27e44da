"""What a person looks at besides the numbers: a dataset's images (listed, read, thumbnailed)
and, behind a model's confusion matrix, the validation images with the model's scores."""

from __future__ import annotations

import io
import re
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from service.datasets import service as datasets
from tests.conftest import Service, colour_images, make_zip, png_bytes, stored_model

# (width, height, format) of the images of the shapes dataset, per class
SHAPES = {
    "wide": [(60, 30, "PNG"), (90, 20, "JPEG")],
    "tall": [(30, 90, "JPEG"), (17, 50, "PNG")],
    "square": [(40, 40, "PNG"), (8, 8, "GIF")],
}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif"}


def encoded(width: int, height: int, image_format: str) -> bytes:
    pixels = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), np.uint8)
    return png_bytes(pixels, image_format)


def upload_shapes(service: Service) -> tuple[str, list[dict[str, Any]]]:
    """The shapes dataset's id, and its images as listed, each with its expected size."""
    files = {
        f"{label}/{number}.{image_format.lower()}": encoded(width, height, image_format)
        for label, shapes in SHAPES.items()
        for number, (width, height, image_format) in enumerate(shapes)
    }
    response = service.client.post("/datasets", files={"file": ("shapes.zip", make_zip(files))})
    assert response.status_code == 201, response.text
    dataset_id = response.json()["id"]
    rows = service.client.get(f"/datasets/{dataset_id}/images").json()
    for row in rows:
        label, name = row["filename"].split("/")
        row["shape"] = SHAPES[label][int(name.split(".")[0])]
        row["data"] = files[row["filename"]]
    return dataset_id, rows


def next_link(response: Any) -> str | None:
    """The path and query of the Link header's rel="next" URL, if any."""
    link = response.headers.get("link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    url = urlsplit(match.group(1))
    return f"{url.path}?{url.query}"


def every_page(service: Service, path: str) -> list[list[dict[str, Any]]]:
    pages = []
    next_path: str | None = path
    while next_path is not None:
        response = service.client.get(next_path)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        next_path = next_link(response)
    return pages


def error_locations(response: Any) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [error["loc"] for error in response.json()["detail"]]


# -- dataset images -----------------------------------------------------------------------


def test_images_read_back_as_uploaded_with_their_media_type(service: Service) -> None:
    dataset_id, rows = upload_shapes(service)
    assert len(rows) == 6
    for row in rows:
        response = service.client.get(f"/datasets/{dataset_id}/images/{row['id']}")
        assert response.status_code == 200
        assert response.content == row["data"] and row["size_bytes"] == len(row["data"])
        assert response.headers["content-type"] == MEDIA_TYPES[row["shape"][2]]
        assert "immutable" in response.headers["cache-control"]
        assert set(row) == {"id", "label", "filename", "size_bytes", "shape", "data"}


@pytest.mark.parametrize("size", [16, 45, 120])
@pytest.mark.any_database
def test_thumbnails_have_the_longer_side_asked_for_and_keep_the_aspect(
    service: Service, size: int
) -> None:
    dataset_id, rows = upload_shapes(service)
    for row in rows:
        width, height, _ = row["shape"]
        response = service.client.get(f"/datasets/{dataset_id}/images/{row['id']}?size={size}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/jpeg"
        assert "immutable" in response.headers["cache-control"]
        thumb = Image.open(io.BytesIO(response.content))
        assert thumb.format == "JPEG"
        assert max(thumb.size) == size
        # The shorter side is rounded to whole pixels: the ratio is kept to within that.
        short = min(thumb.size)
        expected = size * min(width, height) / max(width, height)
        assert abs(short - expected) <= 0.5 + 1e-9, (row["shape"], thumb.size)
        assert (thumb.width >= thumb.height) == (width >= height)


def test_images_list_a_page_at_a_time_in_upload_order(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=5))
    path = f"/datasets/{dataset['id']}/images"
    pages = every_page(service, f"{path}?limit=4")
    assert [len(page) for page in pages] == [4, 4, 4, 3]
    rows = [row for page in pages for row in page]
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids) and len(set(ids)) == 15
    assert rows == service.client.get(path).json()  # one page when it fits
    assert "link" not in service.client.get(path).headers
    for row in rows:
        assert row["filename"].startswith(f"{row['label']}/")


def test_images_filter_by_label_across_pages(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=5))
    path = f"/datasets/{dataset['id']}/images"
    pages = every_page(service, f"{path}?label=green&limit=2")
    assert [len(page) for page in pages] == [2, 2, 1]  # the Link keeps the filter
    assert {row["label"] for page in pages for row in page} == {"green"}
    everything = service.client.get(path).json()
    expected = [row for row in everything if row["label"] == "green"]
    assert [row for page in pages for row in page] == expected


def test_listing_never_reads_the_image_bytes(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=2))
    with service.database.session() as session:
        rows, next_after = datasets.list_images(
            session, dataset["id"], label="red", limit=1, after=None
        )
        assert len(rows) == 1 and next_after == rows[0].id
        # Plain rows of the columns listed, not ORM objects: nothing can load the bytes later.
        assert rows[0]._fields == ("id", "label", "filename", "size_bytes")


@pytest.mark.any_database
def test_bad_image_requests_are_4xx_naming_the_field(service: Service) -> None:
    dataset = service.upload(colour_images(per_class=2))
    other = service.upload(colour_images(per_class=2, seed=1), name="other")
    client = service.client
    path = f"/datasets/{dataset['id']}/images"
    image_id = client.get(path).json()[0]["id"]
    foreign_id = client.get(f"/datasets/{other['id']}/images").json()[0]["id"]

    for missing in (
        "/datasets/d_missing/images",
        f"/datasets/d_missing/images/{image_id}",
        f"{path}/{foreign_id}",  # an image of another dataset is not one of this one
        f"{path}/0",
        f"{path}/{2**40}",
        f"{path}/-3",
    ):
        response = client.get(missing)
        assert response.status_code == 404, (missing, response.text)
        assert response.json()["detail"]

    response = client.get(f"{path}?label=purple")
    assert error_locations(response)[0][-1] == "label"
    assert "purple" in response.json()["detail"][0]["msg"]
    assert "red" in response.json()["detail"][0]["msg"]  # says which classes there are
    for query, field in (("limit=0", "limit"), ("limit=501", "limit"), ("after=-1", "after")):
        assert error_locations(client.get(f"{path}?{query}")) == [["query", field]]
    for size in (0, 15, 1025, "big"):
        response = client.get(f"{path}/{image_id}?size={size}")
        assert error_locations(response) == [["query", "size"]]
    assert error_locations(client.get(f"{path}/abc")) == [["path", "image_id"]]


# -- evaluation samples -------------------------------------------------------------------


def test_prediction_samples_round_and_take_the_argmax() -> None:
    from service.ml.evaluate import prediction_samples

    probabilities = np.array([[0.123456, 0.876544], [0.6, 0.4], [0.49999, 0.50001]], np.float32)
    rows = prediction_samples([7, 9, 12], np.array([1, 1, 0]), probabilities, ["a", "b"])
    assert [(row["image_id"], row["label"], row["predicted"]) for row in rows] == [
        (7, "b", "b"),
        (9, "b", "a"),
        (12, "a", "b"),  # the argmax of the probabilities, whatever rounding makes of them
    ]
    assert rows[0]["scores"] == [0.1235, 0.8765]
    assert rows[2]["scores"] == [0.5, 0.5]


def test_evaluation_samples_are_the_images_of_each_matrix_cell(
    small_model: dict[str, Any],
) -> None:
    client = small_model["service"].client
    model = client.get(f"/models/{small_model['job']['model_id']}").json()
    path = f"/models/{model['id']}/evaluation"
    report = client.get(path).json()
    assert "samples" not in report  # the documented shape, unchanged
    labels = report["confusion_matrix"]["labels"]
    matrix = report["confusion_matrix"]["matrix"]
    everything = client.get(f"{path}/samples").json()
    assert len(everything) == sum(map(sum, matrix))
    for i, label in enumerate(labels):
        assert len(client.get(f"{path}/samples", params={"label": label}).json()) == sum(matrix[i])
        for j, predicted in enumerate(labels):
            cell = client.get(f"{path}/samples", params={"label": label, "predicted": predicted})
            assert cell.status_code == 200, cell.text
            assert len(cell.json()) == matrix[i][j], (label, predicted)
            assert all(s["label"] == label and s["predicted"] == predicted for s in cell.json())


def test_evaluation_samples_name_the_validation_images_and_their_scores(
    small_model: dict[str, Any],
) -> None:
    client = small_model["service"].client
    model = client.get(f"/models/{small_model['job']['model_id']}").json()
    samples = client.get(f"/models/{model['id']}/evaluation/samples").json()
    listed = client.get(f"/datasets/{model['dataset_id']}/images", params={"limit": 500})
    images = {row["id"]: row for row in listed.json()}
    ids = [sample["image_id"] for sample in samples]
    assert ids == sorted(set(ids))  # each validation image once, in dataset order
    for sample in samples:
        assert images[sample["image_id"]]["label"] == sample["label"]  # the right image
        assert list(sample["scores"]) == model["classes"]
        assert sum(sample["scores"].values()) == pytest.approx(1.0, abs=1e-3)
        assert sample["score"] == sample["scores"][sample["predicted"]]
        assert sample["score"] == max(sample["scores"].values())
    # The scores are the model's own: /predict gives the same for the same image.
    for sample in samples[:3]:
        data = client.get(f"/datasets/{model['dataset_id']}/images/{sample['image_id']}").content
        answer = client.post(
            "/predict",
            data={"model_id": model["id"], "top_k": len(model["classes"])},
            files={"files": ("x.png", data, "image/png")},
        )
        assert answer.status_code == 200, answer.text
        top = {entry["label"]: entry["score"] for entry in answer.json()["predictions"][0]["top"]}
        assert top == pytest.approx(sample["scores"], abs=1e-3)


def test_bad_evaluation_sample_requests_name_the_field(small_model: dict[str, Any]) -> None:
    client = small_model["service"].client
    path = f"/models/{small_model['job']['model_id']}/evaluation/samples"
    for field in ("label", "predicted"):
        response = client.get(path, params={field: "purple"})
        assert error_locations(response)[0][-1] == field
        assert "purple" in response.json()["detail"][0]["msg"]
    response = client.get("/models/m_missing/evaluation/samples")
    assert response.status_code == 404 and "m_missing" in response.json()["detail"]


@pytest.mark.any_database
def test_evaluation_samples_404_without_them(service: Service) -> None:
    evaluation = {
        "accuracy": 1.0,
        "per_class": [
            {"label": name, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
            for name in ("a", "b")
        ],
        "confusion_matrix": {"labels": ["a", "b"], "matrix": [[1, 0], [0, 1]]},
    }
    unevaluated = stored_model(None, evaluation=None)
    older = stored_model(None, evaluation=evaluation)  # stored before samples were
    with service.database.session(write=True) as session:
        session.add_all([unevaluated, older])
    response = service.client.get(f"/models/{unevaluated.id}/evaluation/samples")
    assert response.status_code == 404 and "validation_split 0" in response.json()["detail"]
    response = service.client.get(f"/models/{older.id}/evaluation/samples")
    assert response.status_code == 404 and "predates" in response.json()["detail"]
    report = service.client.get(f"/models/{older.id}/evaluation")
    assert report.status_code == 200 and report.json()["accuracy"] == 1.0
