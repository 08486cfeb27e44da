"""Strategy advice and the label review: the table's logic without TensorFlow, the API's
records and errors, and, with the worker, a backbone the service pretrained on shapes that
scores a dataset of other shapes clearly more similar than noise textures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service.advice.service import Figures, advised_spec, quadrant, similarity
from service.advice.spec import AdviceSpec
from service.ml.features import MemoryFeatureStore, stratified_sample
from service.ml.labels import chance_score, fold_count, likely_mislabelled, probe
from service.training.spec import JobSpec
from tests.conftest import (
    LIGHT,
    SQLITE_ONLY,
    Service,
    colour_image,
    colour_images,
    job_body,
    make_settings,
    png_bytes,
)

PRETRAINED = {"name": "MobileNetV2", "weights": "imagenet", "input_size": 96}


def figures(median: int, probe: float, random: float, counts: list[int] | None = None) -> Figures:
    return Figures(
        counts=counts or [median, median, median],
        total=sum(counts or [median, median, median]),
        sampled=3 * median,
        folds=5,
        metric="accuracy",
        probe_accuracy=probe,
        random_accuracy=random,
        chance=1 / 3,
        backbone_layers=154,
    )


def advice_spec(**overrides: Any) -> AdviceSpec:
    return AdviceSpec.model_validate({"dataset_id": "d_x", "backbone": PRETRAINED, **overrides})


# -- the table, without TensorFlow ----------------------------------------------------------


def test_similarity_is_the_share_of_random_errors_removed() -> None:
    assert similarity(0.9, 0.6) == pytest.approx(0.75)
    assert similarity(0.5, 0.8) == 0.0  # worse than random weights: nothing transfers
    assert similarity(1.0, 1.0) == 1.0 and similarity(0.9, 1.0) == 0.0


@pytest.mark.parametrize(
    ("median", "probe", "cell"),
    [
        (40, 0.95, ("little", "similar", 3)),
        (800, 0.95, ("much", "similar", 2)),
        (40, 0.55, ("little", "different", 2)),
        (800, 0.55, ("much", "different", 1)),
    ],
)
def test_each_cell_of_the_table(median: int, probe: float, cell: tuple[str, str, int]) -> None:
    found = quadrant(figures(median, probe, 0.5), advice_spec())
    assert (found["data"], found["similarity"], found["strategy"]) == cell


@pytest.mark.parametrize("strategy", [1, 2, 3])
def test_the_advised_spec_is_a_job_spec(strategy: int) -> None:
    spec = advised_spec(figures(40, 0.9, 0.5, counts=[90, 30, 40]), advice_spec(), strategy)
    job = JobSpec.model_validate(spec)
    assert job.dataset_id == "d_x" and job.backbone.input_size == 96
    assert job.freeze.mode == "backbone"  # the new head warms up on the frozen backbone first
    assert job.training.class_weight == "balanced"  # 90:30 is past 2:1
    modes = [stage.freeze.mode for stage in job.fine_tune]
    assert modes == {1: ["none"], 2: ["partial"], 3: []}[strategy]
    if strategy == 2:
        assert job.fine_tune[0].freeze.trainable_from == -51  # the top third of 154 layers
        assert job.fine_tune[0].learning_rate < job.training.learning_rate


def test_random_weights_advise_training_everything() -> None:
    spec = advice_spec(backbone={**PRETRAINED, "weights": None})
    cell = quadrant(figures(40, 0.95, 0.95), spec)
    assert cell["strategy"] == 1 and cell["similarity"] == "different"
    assert JobSpec.model_validate(advised_spec(figures(40, 0.9, 0.9), spec, 1)).freeze.mode == (
        "none"
    )


def test_stratified_sample_keeps_each_class_share() -> None:
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    sample = stratified_sample(labels, 100, seed=3)
    assert len(sample) <= 100 and np.all(np.diff(sample) > 0)
    counts = np.bincount(labels[sample]).tolist()
    assert counts == [86, 10, 2]  # 2 of each, the other 94 shared as 898 : 88 : 8
    assert np.array_equal(stratified_sample(labels, 100, seed=3), sample)
    assert len(stratified_sample(labels, 5000, seed=3)) == 1000


def test_fold_count_never_exceeds_the_smallest_class() -> None:
    assert fold_count(np.array([0] * 10 + [1] * 3)) == 3
    assert fold_count(np.array([0] * 10 + [1] * 30)) == 5
    assert fold_count(np.array([0] * 10 + [1])) == 0


def test_a_multi_label_probe_scores_how_well_features_rank_each_label() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(80, 3)) < [0.5, 0.3, 0.15]).astype(np.float32)
    noise = rng.normal(size=(80, 4))
    telling = np.hstack([labels * 2 + rng.normal(0, 0.5, labels.shape), noise])
    folds = fold_count(labels)  # each label's positives bound the folds, as classes do
    assert folds == min(5, int(labels.sum(axis=0).min()))
    assert fold_count(np.array([[1, 0], [1, 1], [1, 0]])) == 0  # one image holds the second
    knows = probe(telling, labels, folds=folds, seed=0)
    blind = probe(noise, labels, folds=folds, seed=0)
    assert knows.metric == "mean_average_precision" and knows.probabilities.shape == (80, 3)
    assert knows.score == pytest.approx(
        average_precision_score(labels, knows.probabilities, average="macro"), abs=1e-12
    )
    chance = chance_score(labels)  # what scores that know nothing average: each label's share
    assert chance == pytest.approx(labels.mean(axis=0).mean())
    assert knows.score > 0.95 and blind.score < chance + 0.2


def test_confident_disagreement_is_flagged_with_the_suggested_label() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    probabilities = np.where(labels[:, None] == [0, 1], 0.95, 0.05) + rng.uniform(0, 0.01, (100, 2))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    swapped = [3, 60]
    labels[swapped] = 1 - labels[swapped]
    issues = likely_mislabelled(
        probabilities, labels, list(range(100, 200)), [f"{i}.png" for i in range(100)], ["a", "b"]
    )
    assert [issue["image_id"] for issue in issues] == [103, 160] or {
        issue["image_id"] for issue in issues
    } == {103, 160}
    first = next(issue for issue in issues if issue["image_id"] == 103)
    assert first["label"] == "b" and first["suggested"] == "a" and first["confidence"] > 0.9


# -- the API ---------------------------------------------------------------------------------


@pytest.fixture
def api(service: Service) -> Service:
    """The API and worker over SQLite, and PostgreSQL where TEST_POSTGRES_URL names one."""
    return service


def test_features_are_stored_merged_and_read_in_order(api: Service) -> None:
    from service.storage.feature_store import DatabaseFeatureStore

    dataset = api.upload(colour_images(3))
    store = DatabaseFeatureStore(api.database, dataset["id"])
    ids = [row["id"] for row in api.client.get(f"/datasets/{dataset['id']}/images").json()]
    features = np.arange(len(ids) * 4, dtype=np.float32).reshape(len(ids), 4)
    assert store.load("k", ids) is None
    store.save("k", ids[:5], features[:5])
    store.save("k", ids[3:], features[3:])  # overlaps: the newer rows win, the rest are kept
    np.testing.assert_array_equal(store.load("k", ids[::-1]), features[::-1])
    assert store.load("other", ids) is None
    assert store.load("k", [*ids, 10**6]) is None  # one never extracted: extract them all
    api.client.delete(f"/datasets/{dataset['id']}")
    assert store.load("k", ids) is None  # gone with the dataset


def test_advice_is_queued_as_an_advice_job(api: Service) -> None:
    dataset = api.upload(colour_images(4))
    response = api.client.post(f"/datasets/{dataset['id']}/advice", json={"backbone": PRETRAINED})
    assert response.status_code == 202, response.text
    advice = response.json()
    assert advice["status"] == "queued" and advice["result"] is None
    assert advice["request"]["max_images"] == 1000
    job = api.client.get(f"/jobs/{advice['job_id']}").json()
    assert job["kind"] == "advice" and job["spec"]["dataset_id"] == dataset["id"]
    assert api.client.get("/jobs").json() == []  # training jobs only, as before
    listed = api.client.get("/jobs", params={"kind": "advice"}).json()
    assert [row["id"] for row in listed] == [advice["job_id"]]
    url = f"/datasets/{dataset['id']}/advice"
    assert [row["id"] for row in api.client.get(url).json()] == [advice["id"]]
    assert api.client.get(f"{url}/{advice['id']}").json() == advice
    # A queued advice job uses the dataset, as a training job does.
    assert api.client.delete(f"/datasets/{dataset['id']}").status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"backbone": {"name": "AlexNet"}}, 422, "backbone"),
        ({"backbone": PRETRAINED, "max_images": 5}, 422, "max_images"),
        ({"backbone": PRETRAINED, "surprise": 1}, 422, "surprise"),
        ({"backbone": {**PRETRAINED, "weights": "model:m_nope"}}, 404, "m_nope"),
    ],
)
@pytest.mark.any_database
def test_bad_advice_requests_say_what_is_wrong(
    api: Service, body: dict[str, Any], status: int, names: str
) -> None:
    dataset = api.upload(colour_images(3))
    response = api.client.post(f"/datasets/{dataset['id']}/advice", json=body)
    assert response.status_code == status, response.text
    assert names in response.text
    assert api.client.get("/jobs", params={"kind": "advice"}).json() == []


@pytest.mark.any_database
def test_unknown_dataset_or_advice_is_404(api: Service) -> None:
    response = api.client.post("/datasets/d_nope/advice", json={"backbone": PRETRAINED})
    assert response.status_code == 404 and "d_nope" in response.text
    dataset = api.upload(colour_images(3))
    response = api.client.get(f"/datasets/{dataset['id']}/advice/a_nope")
    assert response.status_code == 404 and "a_nope" in response.text


# -- with the worker -------------------------------------------------------------------------

SHAPE_SIZE = 64


# Each shape's radius scaled so that all cover the same area on average: what tells them
# apart is their outline, which a random network's pooled features barely see.
AREA_SCALE = {"circle": (4 / np.pi) ** 0.5, "square": 1.0, "triangle": 2**0.5, "cross": 1.4}
AREA_SCALE["diamond"] = 2**0.5


def shape(kind: str, rng: np.random.Generator) -> bytes:
    """A white shape at a random place and size on black."""
    size = SHAPE_SIZE
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    r = round(float(rng.uniform(size / 7, size / 5)) * AREA_SCALE[kind])
    x, y = (int(v) for v in rng.integers(r, size - r, 2))
    box, w, white = [x - r, y - r, x + r, y + r], max(2, r // 3), (255, 255, 255)
    if kind == "circle":
        draw.ellipse(box, fill=white)
    elif kind == "square":
        draw.rectangle(box, fill=white)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=white)
    elif kind == "cross":
        draw.rectangle([x - r, y - w, x + r, y + w], fill=white)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=white)
    else:  # diamond
        draw.polygon([(x, y - r), (x - r, y), (x, y + r), (x + r, y)], fill=white)
    return png_bytes(np.asarray(image))


def texture(kind: str, rng: np.random.Generator) -> bytes:
    """Grey noise whose grain (1, 2 or 4 px) is the class: nothing a shape detector needs."""
    grain = {"fine": 1, "mid": 2, "coarse": 4}[kind]
    small = rng.integers(0, 256, (SHAPE_SIZE // grain, SHAPE_SIZE // grain, 1), dtype=np.uint8)
    pixels = np.repeat(np.repeat(np.repeat(small, grain, 0), grain, 1), 3, 2)
    return png_bytes(pixels)


def images_of(make: Any, kinds: list[str], per_class: int, seed: int) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(seed)
    return {kind: [make(kind, rng) for _ in range(per_class)] for kind in kinds}


@pytest.fixture(scope="module")
def shapes_backbone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """MobileNet at 64 px trained from random weights by the service on four shapes (the
    light backbone: a third less CPU than MobileNetV2 for the same margins)."""
    running = Service(make_settings(tmp_path_factory.mktemp("advice")))
    pretraining = images_of(shape, ["circle", "square", "triangle", "cross"], 60, seed=0)
    dataset = running.upload(pretraining, name="shapes")
    body = job_body(
        dataset["id"],
        backbone={**LIGHT, "weights": None, "input_size": SHAPE_SIZE},
        freeze={"mode": "none"},
        training={"epochs": 6, "batch_size": 32, "validation_split": 0.2},
    )
    job = running.train(body)
    yield {"service": running, "model_id": job["model_id"]}
    running.close()


def advise(service: Service, dataset_id: str, **request: Any) -> dict[str, Any]:
    response = service.client.post(f"/datasets/{dataset_id}/advice", json=request)
    assert response.status_code == 202, response.text
    assert service.worker.run_until_idle() >= 1
    advice = service.client.get(f"/datasets/{dataset_id}/advice/{response.json()['id']}").json()
    assert advice["status"] == "succeeded", advice
    return advice


@pytest.mark.slow
def test_same_kind_scores_more_similar_than_unrelated(shapes_backbone: dict[str, Any]) -> None:
    service = shapes_backbone["service"]
    backbone = {
        **LIGHT,
        "weights": f"model:{shapes_backbone['model_id']}",
        "input_size": SHAPE_SIZE,
    }
    # Shapes again, one of them (diamond) new to the backbone; and noise of three grains.
    same = service.upload(images_of(shape, ["diamond", "square", "cross"], 40, seed=1), "more")
    noise = service.upload(images_of(texture, ["fine", "mid", "coarse"], 40, seed=2), "noise")
    similar = advise(service, same["id"], backbone=backbone)["result"]
    unrelated = advise(service, noise["id"], backbone=backbone)["result"]
    print("similarity: shapes", similar["similarity"], similar["probe"])
    print("similarity: textures", unrelated["similarity"], unrelated["probe"])
    assert similar["similarity"] - unrelated["similarity"] >= 0.3
    assert similar["probe"]["accuracy"] > similar["probe"]["random_accuracy"]
    assert unrelated["quadrant"]["similarity"] == "different"
    assert similar["images"] == {
        "total": 120,
        "sampled": 120,
        "smallest_class": 40,
        "median_class": 40,
        "largest_class": 40,
    }
    assert any("median class has 40 images" in reason for reason in similar["reasons"])
    # The same backbone's features of the same images come from the cache the second time.
    again = advise(service, same["id"], backbone=backbone)["result"]
    assert again["features"]["reused"] and not similar["features"]["reused"]
    assert again["probe"]["accuracy"] == pytest.approx(similar["probe"]["accuracy"], abs=1e-9)
    # The advised spec trains as it is.
    job = service.train(similar["spec"])
    assert job["spec"]["fine_tune"] == similar["spec"]["fine_tune"]
    assert job["model_id"]
    # Its frozen first stage had every image's features: the label review is now the job's.
    report = service.client.get(f"/datasets/{same['id']}/report").json()
    assert report["mislabelled"]["review"]["job_id"] == job["id"]


@pytest.mark.slow
def test_the_quadrant_moves_with_the_images_per_class(shapes_backbone: dict[str, Any]) -> None:
    """Unrelated textures: little data → fine-tune the top; much → train everything. With
    more images than max_images, a stratified sample is measured and the answer says so."""
    service = shapes_backbone["service"]
    backbone = {
        **LIGHT,
        "weights": f"model:{shapes_backbone['model_id']}",
        "input_size": SHAPE_SIZE,
    }
    grains = ["fine", "mid", "coarse"]
    few = service.upload(images_of(texture, grains, 12, seed=3), "few")
    many = service.upload(images_of(texture, grains, 500, seed=4), "many")
    little = advise(service, few["id"], backbone=backbone)["result"]
    much = advise(service, many["id"], backbone=backbone, max_images=60)["result"]
    print("similarity: few", little["similarity"], little["quadrant"], little["probe"])
    print("similarity: many", much["similarity"], much["quadrant"], much["probe"])
    assert (little["quadrant"]["data"], little["quadrant"]["strategy"]) == ("little", 2)
    assert (much["quadrant"]["data"], much["quadrant"]["strategy"]) == ("much", 1)
    assert much["images"]["total"] == 1500 and much["images"]["sampled"] == 60
    assert any("stratified sample of 60 of the 1500" in reason for reason in much["reasons"])
    assert [stage["freeze"]["mode"] for stage in much["spec"]["fine_tune"]] == ["none"]


def uploaded_weights(service: Service, tmp_path: Path) -> str:
    """A MobileNetV2 weights file at 32 px (Keras's own initialisation, seeded), uploaded:
    "file:<id>" for a spec's weights."""
    import keras

    path = tmp_path / "backbone.weights.h5"
    keras.utils.set_random_seed(3)
    keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    ).save_weights(str(path))
    response = service.client.post(
        "/weights",
        files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
        data={"backbone": "MobileNetV2"},
    )
    assert response.status_code == 201, response.text
    return f"file:{response.json()['id']}"


@pytest.mark.slow
@SQLITE_ONLY  # the probe's findings; the review's storage is test_report.py's
def test_swapped_labels_are_found(api: Service, tmp_path: Path) -> None:
    """An easy dataset (one dominant colour per class) with a handful of labels swapped: the
    advice's probe finds them, and the report lists them."""
    rng = np.random.default_rng(5)
    colours = {"red": 0, "green": 1, "blue": 2}
    files: dict[str, list[bytes]] = {}
    planted = set()
    for name, channel in colours.items():
        # The last two of each folder are pictures of the previous colour, mislabelled.
        shown = [channel] * 28 + [(channel + 2) % 3] * 2
        files[name] = [png_bytes(colour_image(colour, rng)) for colour in shown]
        planted |= {f"{name}/028.png", f"{name}/029.png"}
    dataset = api.upload(files, name="swapped")
    random_weights = {"name": "MobileNetV2", "weights": None, "input_size": 32}
    advise(api, dataset["id"], backbone=random_weights)
    report = api.client.get(f"/datasets/{dataset['id']}/report").json()
    assert report["mislabelled"]["review"] is None  # random weights' features review nothing
    advise(
        api, dataset["id"], backbone={**random_weights, "weights": uploaded_weights(api, tmp_path)}
    )
    report = api.client.get(f"/datasets/{dataset['id']}/report").json()
    flagged = {issue["filename"] for issue in report["mislabelled"]["review"]["issues"]}
    found = flagged & planted
    precision, recall = len(found) / max(len(flagged), 1), len(found) / len(planted)
    print(f"mislabel finder: precision {precision:.2f} recall {recall:.2f} of {len(planted)}")
    assert precision >= 0.8 and recall >= 0.6, (flagged, planted)


@pytest.mark.slow
def test_a_frozen_stage_reuses_stored_features(tmp_path: Path) -> None:
    """Features of a pretrained backbone are stored by the first job and read by the next;
    planted features prove they are read, not recomputed."""
    import keras

    from service.ml.data import LabelledImages
    from service.ml.train import train
    from tests.test_drift import seeded_backbone_file

    weights = tmp_path / "backbone.weights.h5"
    seeded_backbone_file(weights)
    images = colour_images(per_class=6)
    data = LabelledImages(
        images=[image for group in images.values() for image in group],
        labels=np.repeat(np.arange(3, dtype=np.int32), 6),
        classes=list(images),
        ids=list(range(101, 119)),
        filenames=[f"{i}.png" for i in range(18)],
    )
    body = job_body(
        "d_x",
        backbone={"name": "MobileNetV2", "weights": "file:w_x", "input_size": 32},
        freeze={"mode": "backbone"},
        training={"epochs": 1, "batch_size": 8, "validation_split": 0.25},
    )
    spec = JobSpec.model_validate(body)
    store = MemoryFeatureStore()

    class Quiet:
        def on_progress(self, progress: dict[str, int]) -> None: ...
        def on_epoch(self, row: dict[str, float]) -> None: ...
        def should_stop(self) -> bool:
            return False

    first = train(spec, data, Quiet(), backbone_weights=weights, feature_store=store)
    key = "MobileNetV2|file:w_x|32|avg"
    assert not first.features_reused and set(store.rows[key]) == set(data.ids)
    keras.backend.clear_session()
    second = train(spec, data, Quiet(), backbone_weights=weights, feature_store=store)
    assert second.features_reused
    np.testing.assert_allclose(second.features[1], first.features[1])
    store.rows[key] = {image_id: np.zeros(1280, np.float32) for image_id in data.ids}
    planted = train(spec, data, Quiet(), backbone_weights=weights, feature_store=store)
    assert planted.features_reused and not planted.features[1].any()
