"""The dataset health report (`GET /datasets/{id}/report`): each problem planted in a small
zip is found and its files named; the split it checks is the worker's; images stored before
their facts existed are measured once. No TensorFlow: tiny images made here with Pillow.

Random-noise images at 48 px are never near-duplicates of one another (their perceptual
hashes lie some 32 bits apart, never under 14), so the only copies are the planted ones.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update

from service.datasets import ingest, similar, versions
from service.datasets import report as reports
from service.ml.split import stratified_split
from service.storage.tables import Dataset, DatasetImage
from tests.conftest import Service, make_zip, post_zip
from tests.test_ingest import read

FACTS = ("sha256", "phash", "width", "height", "mode")


def encoded(image: Image.Image, image_format: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def noise(rng: np.random.Generator, width: int = 48, height: int = 48) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def picture(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A smooth picture (6×6 colours enlarged): JPEG keeps its look, as it does a photo's."""
    cells = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return cells.resize((size, size), Image.Resampling.BICUBIC)


def noise_files(rng: np.random.Generator, label: str, count: int) -> dict[str, bytes]:
    return {f"{label}/n{number:02d}.png": encoded(noise(rng)) for number in range(count)}


def upload(service: Service, files: dict[str, bytes]) -> str:
    response = post_zip(service, make_zip(files))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def get_report(service: Service, dataset_id: str, **query: Any) -> dict[str, Any]:
    response = service.client.get(f"/datasets/{dataset_id}/report", params=query)
    assert response.status_code == 200, response.text
    return response.json()


def image_ids(service: Service, dataset_id: str) -> dict[str, int]:
    """filename → image id."""
    rows = service.client.get(f"/datasets/{dataset_id}/images", params={"limit": 500}).json()
    return {row["filename"]: row["id"] for row in rows}


def names(images: list[dict[str, Any]]) -> list[str]:
    return [image["filename"] for image in images]


def worker_split(
    service: Service, dataset_id: str, seed: int, fraction: float
) -> tuple[set[int], set[int]]:
    """Image ids (training, validation) as the worker splits them: rows in id order, classes
    numbered in the dataset's order (training.task.load_dataset, then
    ml.pipeline.prepare_splits)."""
    with service.database.session() as session:
        classes = [entry["name"] for entry in session.get(Dataset, dataset_id).classes]
        latest = versions.version_id(session, dataset_id, None)
        rows = session.execute(versions.version_images(latest)).all()
    labels = np.array([classes.index(row.label) for row in rows], dtype=np.int32)
    train, validation = stratified_split(labels, fraction, seed)
    return {rows[i].id for i in train}, {rows[i].id for i in validation}


# -- the report on planted problems -------------------------------------------------------


def planted_files() -> dict[str, bytes]:
    """cats 30, dogs 10 (3:1, and dogs below the floor), with one of each problem."""
    rng = np.random.default_rng(7)
    shared = encoded(noise(rng))
    scene = picture(rng)
    files = {
        **noise_files(rng, "cats", 24),
        "cats/dup.png": shared,
        "cats/scene.png": encoded(scene),
        "cats/scene_again.jpg": encoded(scene, "JPEG", quality=75),
        "cats/gray.png": encoded(noise(rng).convert("L")),
        "cats/wide.png": encoded(noise(rng, width=120, height=40)),
        "cats/tiny.png": encoded(noise(rng, width=20, height=20)),
        **noise_files(rng, "dogs", 8),
        "dogs/dup.png": shared,
        "dogs/print.jpg": encoded(noise(rng).convert("CMYK"), "JPEG", quality=90),
    }
    assert sum(name.startswith("cats/") for name in files) == 30
    return files


def test_planted_problems_are_found_and_their_files_named(service: Service) -> None:
    dataset_id = upload(service, planted_files())
    report = get_report(service, dataset_id, input_size=32)

    assert report["images"] == 40
    assert report["classes"] == [{"name": "cats", "count": 30}, {"name": "dogs", "count": 10}]
    assert report["balance"]["ratio"] == 3.0 and report["balance"]["imbalanced"]
    assert report["small_classes"] == {"floor": 20, "classes": [{"name": "dogs", "count": 10}]}

    [exact] = report["duplicates"]["exact"]
    assert exact["scope"] == "across_classes" and exact["distance"] == 0
    assert [(image["filename"], image["label"]) for image in exact["images"]] == [
        ("cats/dup.png", "cats"),
        ("dogs/dup.png", "dogs"),
    ]
    [near] = report["duplicates"]["near"]
    assert near["kind"] == "near" and near["scope"] == "within_class"
    assert names(near["images"]) == ["cats/scene.png", "cats/scene_again.jpg"]
    assert 0 <= near["distance"] <= similar.NEAR_DUPLICATE_BITS

    assert names(report["small_images"]["images"]) == ["cats/tiny.png"]
    assert report["small_images"]["input_size"] == 32
    [wide] = report["extreme_aspect"]["images"]
    assert (wide["filename"], wide["width"], wide["height"]) == ("cats/wide.png", 120, 40)
    [gray] = report["grayscale"]["images"]
    assert (gray["filename"], gray["mode"]) == ("cats/gray.png", "L")
    [cmyk] = report["cmyk"]["images"]
    assert (cmyk["filename"], cmyk["label"], cmyk["mode"]) == ("dogs/print.jpg", "dogs", "CMYK")
    ids = image_ids(service, dataset_id)
    assert all(image["id"] == ids[image["filename"]] for image in exact["images"])

    text = "\n".join(report["warnings"])
    for expected in (
        "imbalanced 3:1 (cats 30, dogs 10)",
        'class_weight: "balanced"',
        "fewer than 20 images",
        "dogs (10)",
        "1 group of byte-identical copies (2 images), 1 under different labels (one "
        "picture, two labels): e.g. cats/dup.png, dogs/dup.png",
        "1 group of near-duplicates (2 images): e.g. cats/scene.png, cats/scene_again.jpg",
        "1 image is smaller than input_size 32 px on the shorter side and will be upscaled: "
        "cats/tiny.png",
        "1 image is more than 2.5 times as long as wide (or as tall), and the model squashes "
        "every image to a square: cats/wide.png",
        "1 image is grayscale: the model sees three equal channels: cats/gray.png",
        "1 image is CMYK: made RGB without a colour profile, so colours may shift: dogs/print.jpg",
    ):
        assert expected in text, expected


@pytest.mark.any_database
def test_without_input_size_nothing_is_upscaled(service: Service) -> None:
    report = get_report(service, upload(service, planted_files()))
    assert report["small_images"] == {"input_size": None, "count": 0, "images": []}
    assert not any("upscaled" in warning for warning in report["warnings"])


def test_a_dataset_without_problems_has_no_warnings_even_at_3_to_2(service: Service) -> None:
    rng = np.random.default_rng(1)
    dataset_id = upload(service, noise_files(rng, "cats", 30) | noise_files(rng, "dogs", 20))
    report = get_report(service, dataset_id, seed=3, validation_split=0.3, input_size=48)

    assert report["warnings"] == []
    assert report["balance"] == {
        "ratio": 1.5,
        "largest": {"name": "cats", "count": 30},
        "smallest": {"name": "dogs", "count": 20},
        "imbalanced": False,
        "note": None,
    }
    assert report["duplicates"] == {"exact": [], "near": []}
    assert report["small_classes"]["classes"] == []
    for finding in ("small_images", "extreme_aspect", "grayscale", "cmyk"):
        assert report[finding]["count"] == 0 and report[finding]["images"] == []
    leakage = report["leakage"]
    assert (leakage["seed"], leakage["validation_split"], leakage["count"]) == (3, 0.3, 0)
    assert (leakage["training_images"], leakage["validation_images"]) == (35, 15)
    assert report["mislabelled"]["review"] is None
    assert f"POST /datasets/{dataset_id}/advice" in report["mislabelled"]["note"]
    assert report["thresholds"] == {
        "min_class_images": 20,
        "near_duplicate_bits": 6,
        "max_aspect_ratio": 2.5,
        "max_balance_ratio": 2.0,
    }


@pytest.mark.any_database
def test_several_small_classes_are_counted_in_plain_english(service: Service) -> None:
    rng = np.random.default_rng(2)
    files = {name: data for label in "abc" for name, data in noise_files(rng, label, 3).items()}
    report = get_report(service, upload(service, files))
    assert "3 classes have fewer than 20 images" in "\n".join(report["warnings"])


# -- leakage: the worker's split ----------------------------------------------------------


def test_a_copy_of_a_training_image_in_validation_is_named(service: Service) -> None:
    rng = np.random.default_rng(2)
    files = noise_files(rng, "cats", 20) | noise_files(rng, "dogs", 20)
    files["cats/n00_copy.png"] = files["cats/n00.png"]
    dataset_id = upload(service, files)
    ids = image_ids(service, dataset_id)
    original, copy = ids["cats/n00.png"], ids["cats/n00_copy.png"]

    def sides(seed: int) -> tuple[bool, bool]:
        _, validation = worker_split(service, dataset_id, seed, 0.2)
        return original in validation, copy in validation

    straddling = next(seed for seed in range(100) if sum(sides(seed)) == 1)
    together = next(seed for seed in range(100) if sum(sides(seed)) == 0)
    report = get_report(service, dataset_id, seed=straddling, validation_split=0.2)

    [pair] = report["leakage"]["pairs"]
    trained, held_out = (copy, original) if sides(straddling)[0] else (original, copy)
    assert (pair["training"]["id"], pair["validation"]["id"]) == (trained, held_out)
    assert (pair["kind"], pair["scope"], pair["distance"]) == ("exact", "within_class", 0)
    assert {pair["training"]["filename"], pair["validation"]["filename"]} == {
        "cats/n00.png",
        "cats/n00_copy.png",
    }
    assert report["leakage"]["count"] == 1
    assert (
        f"1 image appears in both training and validation at seed {straddling} "
        "(validation_split 0.2): the validation score will be inflated"
    ) in report["warnings"][0]

    report = get_report(service, dataset_id, seed=together, validation_split=0.2)
    assert report["leakage"]["count"] == 0 and len(report["duplicates"]["exact"]) == 1
    assert get_report(service, dataset_id, validation_split=0)["leakage"]["count"] == 0


def test_the_split_checked_is_the_workers(service: Service) -> None:
    """Every picture twice, in three classes of different sizes: the report's leaked pairs
    are exactly the twins the worker's split puts on both sides, for several seeds."""
    rng = np.random.default_rng(3)
    files: dict[str, bytes] = {}
    for label, count in (("zebra", 9), ("ant", 6), ("moth", 11)):
        for number in range(count):
            data = encoded(noise(rng))
            files[f"{label}/{number:02d}a.png"] = files[f"{label}/{number:02d}b.png"] = data
    dataset_id = upload(service, files)
    ids = image_ids(service, dataset_id)
    twin = {ids[name]: ids[name[:-5] + ("b" if name[-5] == "a" else "a") + ".png"] for name in ids}

    for seed, fraction in ((0, 0.2), (1, 0.5), (2, 0.35), (12345, 0.25)):
        train, validation = worker_split(service, dataset_id, seed, fraction)
        report = get_report(service, dataset_id, seed=seed, validation_split=fraction)
        leaked = {
            (pair["training"]["id"], pair["validation"]["id"])
            for pair in report["leakage"]["pairs"]
        }
        assert leaked == {(twin[image], image) for image in validation if twin[image] in train}
        assert report["leakage"]["training_images"] == len(train)
        assert report["leakage"]["validation_images"] == len(validation)


def test_near_copies_across_the_split_are_leakage_too(service: Service) -> None:
    rng = np.random.default_rng(4)
    scene = picture(rng)
    files = noise_files(rng, "cats", 20) | noise_files(rng, "dogs", 20)
    files["cats/scene.png"] = encoded(scene)
    files["dogs/scene_small.png"] = encoded(scene.resize((56, 56), Image.Resampling.BILINEAR))
    dataset_id = upload(service, files)
    ids = image_ids(service, dataset_id)
    first, second = ids["cats/scene.png"], ids["dogs/scene_small.png"]
    seed = next(
        seed
        for seed in range(100)
        if len({first, second} & worker_split(service, dataset_id, seed, 0.2)[1]) == 1
    )
    [pair] = get_report(service, dataset_id, seed=seed)["leakage"]["pairs"]
    assert (pair["kind"], pair["scope"]) == ("near", "across_classes")
    assert {pair["training"]["id"], pair["validation"]["id"]} == {first, second}


# -- facts: measured at upload, or later for old rows -------------------------------------


def test_ingest_measures_the_facts_from_its_one_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counted(data: bytes, **options: Any) -> Image.Image:
        calls.append(len(data))
        return decode(data, **options)

    decode = ingest.decode
    monkeypatch.setattr(ingest, "decode", counted)
    rng = np.random.default_rng(5)
    gray = encoded(noise(rng, width=30, height=20).convert("L"))
    archive = read({"a/1.png": gray, "b/2.jpg": encoded(noise(rng), "JPEG"), "b/x.txt": b"x"})
    assert len(calls) == 3  # one per file, the text file included
    facts = {image.filename: image.facts for image in archive.images}
    assert facts["a/1.png"].sha256 == hashlib.sha256(gray).hexdigest()
    assert (facts["a/1.png"].width, facts["a/1.png"].height, facts["a/1.png"].mode) == (
        30,
        20,
        "L",
    )
    assert facts["b/2.jpg"].mode == "RGB"
    assert all(len(fact.phash) == 16 and int(fact.phash, 16) >= 0 for fact in facts.values())


def test_images_stored_without_facts_are_measured_once_and_kept(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reports, "MEASURE_BATCH", 4)  # several batches, one short
    dataset_id = upload(service, planted_files())
    before = get_report(service, dataset_id, input_size=32)
    with service.database.session(write=True) as session:
        stored = {row.id: tuple(row[1:]) for row in session.execute(_facts(dataset_id))}
        session.execute(
            update(DatasetImage)
            .where(DatasetImage.dataset_id == dataset_id)
            .values(dict.fromkeys(FACTS))
        )

    after = get_report(service, dataset_id, input_size=32)
    assert (before["measured"], after["measured"]) == (0, 40)
    assert after | {"measured": 0} == before
    with service.database.session() as session:
        assert {row.id: tuple(row[1:]) for row in session.execute(_facts(dataset_id))} == stored
    assert get_report(service, dataset_id)["measured"] == 0


def _facts(dataset_id: str) -> Any:
    columns = [getattr(DatasetImage, name) for name in FACTS]
    return select(DatasetImage.id, *columns).where(DatasetImage.dataset_id == dataset_id)


# -- the label review, errors -------------------------------------------------------------


def test_the_stored_label_review_is_shown(service: Service) -> None:
    rng = np.random.default_rng(6)
    dataset_id = upload(service, noise_files(rng, "cats", 20) | noise_files(rng, "dogs", 20))
    ids = image_ids(service, dataset_id)
    issue = {
        "image_id": ids["cats/n03.png"],
        "filename": "cats/n03.png",
        "label": "cats",
        "suggested": "dogs",
        "confidence": 0.91,
    }
    review = {
        "method": "out-of-fold logistic probe",
        "features": "MobileNetV2/imagenet/96",
        "job_id": "j_0123456789abcdef",
        "created_at": "2026-11-29T12:00:00+00:00",
        "images_checked": 40,
        "probe_accuracy": 0.85,
        "issues": [issue],
    }
    with service.database.session(write=True) as session:
        session.execute(update(Dataset).where(Dataset.id == dataset_id).values(label_review=review))
    report = get_report(service, dataset_id)
    shown = report["mislabelled"]["review"]
    assert shown["issues"] == [issue]
    assert shown["job_id"] == review["job_id"] and shown["probe_accuracy"] == 0.85
    assert shown["created_at"].startswith("2026-11-29T12:00:00")
    assert report["mislabelled"]["note"].startswith("1 image of 40 checked looks mislabelled")
    assert report["warnings"] == [
        report["mislabelled"]["note"] + ", each listed with the label it more likely has"
    ]


@pytest.mark.any_database
def test_an_unknown_dataset_is_404(service: Service) -> None:
    response = service.client.get("/datasets/d_missing/report")
    assert response.status_code == 404, response.text
    assert "d_missing" in response.json()["detail"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("seed=-1", "seed"),
        (f"seed={2**31}", "seed"),
        ("seed=x", "seed"),
        ("validation_split=1", "validation_split"),
        ("validation_split=-0.1", "validation_split"),
        ("validation_split=nan", "validation_split"),
        ("input_size=0", "input_size"),
        ("input_size=2049", "input_size"),
    ],
)
@pytest.mark.any_database
def test_bad_query_values_are_422_naming_the_field(
    service: Service, query: str, field: str
) -> None:
    rng = np.random.default_rng(8)
    dataset_id = upload(service, noise_files(rng, "cats", 2) | noise_files(rng, "dogs", 2))
    response = service.client.get(f"/datasets/{dataset_id}/report?{query}")
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["query", field]]


# -- the arithmetic -----------------------------------------------------------------------


def flipped(value: np.uint64, bits: int, rng: np.random.Generator) -> np.uint64:
    """`value` with `bits` of its bits flipped."""
    for bit in rng.choice(64, bits, replace=False):
        value ^= np.uint64(1) << np.uint64(bit)
    return value


def test_hamming_pairs_match_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    # Neighbours of some of them, 0..10 bits away, so that pairs at the limit exist.
    near = [flipped(base[bits], bits, rng) for bits in range(11)]
    hashes = np.concatenate([base, np.array(near, dtype=np.uint64)])
    bits = similar.NEAR_DUPLICATE_BITS

    def distance(i: int, j: int) -> int:
        return bin(int(hashes[i]) ^ int(hashes[j])).count("1")

    expected = {
        (i, j, distance(i, j))
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if distance(i, j) <= bits
    }
    assert {(i, 300 + i, i) for i in range(bits + 1)} <= expected
    for cells in (similar.PAIR_CELLS, 1000, 1):  # one band, several, one row at a time
        monkeypatch.setattr(similar, "PAIR_CELLS", cells)
        pairs = similar.hamming_pairs(hashes, bits)
        assert set(zip(*(part.tolist() for part in pairs), strict=True)) == expected


# -- the report's findings as edits ---------------------------------------------------------


def test_report_actions_show_their_edit_first_and_apply_as_one_version(service: Service) -> None:
    dataset_id = upload(service, planted_files())
    ids = image_ids(service, dataset_id)
    base = f"/datasets/{dataset_id}/report/actions"

    proposed = service.client.get(f"{base}/remove-duplicates")
    assert proposed.status_code == 200, proposed.text
    edit = proposed.json()
    later = max(ids["cats/dup.png"], ids["dogs/dup.png"])
    assert edit["delete"] == [later] and edit["relabel"] == [] and edit["base_version"] == 1
    assert service.client.get(f"/datasets/{dataset_id}").json()["version"] == 1  # a preview
    applied = service.client.post(f"/datasets/{dataset_id}/edits", json=edit)
    assert applied.status_code == 201, applied.text
    assert applied.json()["number"] == 2 and "exact duplicates" in applied.json()["message"]
    assert get_report(service, dataset_id)["duplicates"]["exact"] == []
    assert get_report(service, dataset_id, version=1)["duplicates"]["exact"] != []
    # Proposed against version 1: applying it again now is refused, not applied twice.
    assert service.client.post(f"/datasets/{dataset_id}/edits", json=edit).status_code == 409

    query = {"seed": 3, "validation_split": 0.5}
    leaked = {
        pair["validation"]["id"]
        for pair in get_report(service, dataset_id, **query)["leakage"]["pairs"]
    }
    edit = service.client.get(f"{base}/remove-leakage", params=query).json()
    assert set(edit["delete"]) == leaked and edit["base_version"] == 2

    nothing = service.client.get(f"{base}/accept-suggestions").json()
    assert nothing["relabel"] == [] and nothing["delete"] == []  # no label review yet
    unknown = service.client.get(f"{base}/tidy-up")
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"][-1] == "action"
