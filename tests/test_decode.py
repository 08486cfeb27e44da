"""JPEGs decoded at the size they are needed at (`ml.images`): close to the full decode where
they are reduced, identical where they are not, and refused exactly as before when broken.

`full_size_pixels` is the decode every model before the change was trained on, kept here
as the reference.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import cache
from typing import Any

import imagehash
import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from sklearn.datasets import load_sample_image

from service.datasets.ingest import Limits, read_image_zip
from service.ml.images import (
    PHASH_SIDE,
    REDUCING_GAP,
    UndecodableImage,
    decode,
    image_facts,
    stored_size,
    thumbnail,
    to_pixels,
)
from tests.conftest import make_zip

# Mean absolute difference, on the 0–255 scale, allowed between the reduced and the full
# decode after the resize; measured 0.07–0.33 on sklearn's photos upscaled (1920×1080 to
# 4000×3000, at 32 to 224 px).
MEAN_DIFFERENCE_BOUND = 0.5


def full_size_pixels(data: bytes, size: int) -> np.ndarray:
    """`to_pixels` as it was before the reduced decode: every pixel decoded, then resized."""
    image = Image.open(io.BytesIO(data))
    image.load()
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def encoded(image: Image.Image, image_format: str = "JPEG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


@cache
def photo(name: str, width: int, height: int) -> Image.Image:
    """One of scikit-learn's two sample photographs (640×427), scaled to the size asked."""
    pixels = load_sample_image(name)
    return Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC)


@cache
def large_jpeg(progressive: bool = False) -> bytes:
    return encoded(photo("china.jpg", 2000, 1500), quality=90, progressive=progressive)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("size", [32, 64, 224])
def test_a_large_jpeg_is_decoded_reduced_and_close_to_the_full_decode(size: int) -> None:
    data = large_jpeg()
    reduced = decode(data, reduce_to=REDUCING_GAP * size)
    # The smallest DCT scale whose both sides still cover the gap times the size: the resize
    # stays a downscale, and the stored size is still known.
    covered = REDUCING_GAP * size
    scale = min(8, 2 ** int(np.log2(min(2000 // covered, 1500 // covered))))
    assert scale > 1
    assert reduced.size == (-(-2000 // scale), -(-1500 // scale))
    assert min(reduced.size) >= covered
    assert stored_size(reduced) == (2000, 1500)
    difference = mean_difference(to_pixels(data, size), full_size_pixels(data, size))
    assert 0 < difference < MEAN_DIFFERENCE_BOUND, difference


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [(1023, 129, 64), (129, 1023, 64), (511, 257, 32), (257, 2000, 128), (64, 64, 64)],
)
def test_the_reduced_decode_never_drops_a_side_below_the_size(
    width: int, height: int, size: int
) -> None:
    data = encoded(photo("flower.jpg", width, height), quality=85)
    reduced = decode(data, reduce_to=size)
    assert reduced.width >= size and reduced.height >= size, reduced.size
    assert to_pixels(data, size).shape == (size, size, 3)


# Made when a test asks, not at collection, where every xdist process would encode them all.
UNREDUCED: dict[str, Callable[[], bytes]] = {
    "large-png": lambda: encoded(photo("flower.jpg", 1600, 1200), "PNG"),
    "large-rgba-png": lambda: encoded(photo("flower.jpg", 1600, 1200).convert("RGBA"), "PNG"),
    "large-webp": lambda: encoded(photo("flower.jpg", 1600, 1200), "WEBP"),
    "jpeg-under-4x-the-size": lambda: encoded(photo("china.jpg", 250, 200)),
    "jpeg-one-side-under-4x": lambda: encoded(photo("china.jpg", 255, 900)),
    "jpeg-at-the-size": lambda: encoded(photo("china.jpg", 64, 64)),
    "jpeg-enlarged": lambda: encoded(photo("china.jpg", 40, 30)),
}


@pytest.mark.parametrize("case", UNREDUCED)
def test_pngs_and_small_jpegs_decode_exactly_as_before(case: str) -> None:
    data = UNREDUCED[case]()
    np.testing.assert_array_equal(to_pixels(data, 64), full_size_pixels(data, 64))


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.999])
def test_a_truncated_large_jpeg_is_still_refused(progressive: bool, keep: float) -> None:
    data = large_jpeg(progressive)
    truncated = data[: int(len(data) * keep)]
    for reduce_to in (PHASH_SIDE, 64, 224, None):
        with pytest.raises(UndecodableImage, match="not a decodable image"):
            decode(truncated, reduce_to=reduce_to)
    with pytest.raises(UndecodableImage, match="not a decodable image"):
        to_pixels(truncated, 64)


def test_a_jpeg_missing_only_its_end_marker_is_refused_as_before() -> None:
    data = large_jpeg()
    for cut in (1, 2):
        with pytest.raises(UndecodableImage):
            decode(data[:-cut], reduce_to=PHASH_SIDE)


@pytest.mark.parametrize("seed", range(12))
def test_a_corrupt_jpeg_fails_or_decodes_reduced_exactly_as_in_full(seed: int) -> None:
    """Bytes flipped inside the entropy-coded data: libjpeg decides whether that is fatal,
    and it decodes every byte either way, so the reduced decode must decide alike."""
    data = bytearray(large_jpeg())
    rng = np.random.default_rng(seed)
    for position in rng.integers(2000, len(data) - 2000, 20):
        data[position] ^= 0xFF

    def outcome(reduce_to: int | None) -> str:
        try:
            decode(bytes(data), reduce_to=reduce_to)
        except UndecodableImage as error:
            return str(error)
        return "decoded"

    assert outcome(PHASH_SIDE) == outcome(None)


def test_the_upload_check_refuses_truncated_photos_and_keeps_their_stored_size() -> None:
    data = large_jpeg()
    progressive = large_jpeg(progressive=True)
    archive = read_image_zip(
        io.BytesIO(
            make_zip(
                {
                    "a/photo.jpg": data,
                    "b/progressive.jpg": progressive,
                    "b/cut.jpg": data[: len(data) // 2],
                    "b/cut-progressive.jpg": progressive[: len(progressive) * 9 // 10],
                }
            )
        ),
        Limits(max_files=10, max_image_bytes=1 << 24, max_total_bytes=1 << 26),
    )
    assert [image.filename for image in archive.images] == ["a/photo.jpg", "b/progressive.jpg"]
    assert {entry["path"] for entry in archive.skipped} == {"b/cut.jpg", "b/cut-progressive.jpg"}
    assert all("not a decodable image" in entry["reason"] for entry in archive.skipped)
    for image in archive.images:
        assert (image.facts.width, image.facts.height) == (2000, 1500)
        assert image.facts.mode == "RGB"


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_facts_from_the_reduced_decode_match_the_full_decode(mode: str) -> None:
    data = encoded(photo("flower.jpg", 2000, 1500).convert(mode), quality=90)
    full = image_facts(data, decode(data))
    reduced = image_facts(data, decode(data, reduce_to=PHASH_SIDE))
    assert (reduced.sha256, reduced.width, reduced.height, reduced.mode) == (
        full.sha256,
        full.width,
        full.height,
        full.mode,
    )
    # Near-duplicates are found within 6 of 64 bits: the reduced decode must stay well inside.
    distance = imagehash.hex_to_hash(reduced.phash) - imagehash.hex_to_hash(full.phash)
    assert distance <= 2, distance


def test_a_file_cannot_declare_its_own_stored_size() -> None:
    text = PngImagePlugin.PngInfo()
    text.add_text("service.decoded", "(9999, 9999)")
    data = encoded(Image.new("RGB", (20, 10)), "PNG", pnginfo=text)
    facts = image_facts(data, decode(data, reduce_to=PHASH_SIDE))
    assert (facts.width, facts.height) == (20, 10)


@pytest.mark.parametrize(("width", "height"), [(2000, 1500), (1999, 1001), (1001, 1999)])
def test_thumbnails_of_a_large_jpeg_keep_the_stored_aspect(width: int, height: int) -> None:
    data = encoded(photo("china.jpg", width, height), quality=90)
    scale = 128 / max(width, height)
    with Image.open(io.BytesIO(thumbnail(data, 128))) as small:
        assert small.size == (round(width * scale), round(height * scale))


def photo_crops(per_class: int, seed: int = 0) -> tuple[list[bytes], np.ndarray, list[str]]:
    """JPEG crops of the two sample photographs, each photo's left and right halves a class,
    at sizes from under twice the model's input to well over eight times: every DCT scale."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    classes = ["china-left", "china-right", "flower-left", "flower-right"]
    for label, name in enumerate(classes):
        source = load_sample_image(f"{name.split('-')[0]}.jpg")
        half = source[:, :320] if name.endswith("left") else source[:, 320:]
        for _ in range(per_class):
            width, height = int(rng.integers(48, 320)), int(rng.integers(48, 427))
            left = int(rng.integers(0, half.shape[1] - width + 1))
            top = int(rng.integers(0, half.shape[0] - height + 1))
            crop = Image.fromarray(half[top : top + height, left : left + width])
            images.append(encoded(crop, quality=int(rng.integers(70, 96))))
            labels.append(label)
    return images, np.asarray(labels, dtype=np.int32), classes


@pytest.mark.slow
def test_a_model_trained_on_the_full_decode_agrees_with_itself_on_the_reduced_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model trained before the change (its pixels from the full decode) predicts the same
    class on the reduced decode for at least 99 % of its validation images.

    Trained from random weights (nothing is downloaded in tests) long enough to be right on
    about nine in ten: a model barely trained flips on ±1 grey level of noise as often as on
    the reduced decode, and measures nothing.
    """
    import keras

    from service.ml import pipeline
    from service.ml import train as training
    from service.ml.data import LabelledImages
    from service.training.spec import JobSpec

    images, labels, classes = photo_crops(per_class=100)
    body = {
        "dataset_id": "d_test",
        "backbone": {"name": "MobileNet", "weights": None, "input_size": 32},
        "head": {"pooling": "avg", "dense": [], "dropout": 0.0},
        "freeze": {"mode": "none"},
        "training": {"epochs": 10, "batch_size": 16, "validation_split": 0.5, "seed": 0},
    }
    keras.backend.clear_session()
    monkeypatch.setattr(pipeline, "to_pixels", full_size_pixels)
    result = training.train(
        JobSpec.model_validate(body),
        LabelledImages(images=images, labels=labels, classes=classes),
        _Quiet(),
        backbone_weights=None,
    )
    validation = [images[i] for i in result.validation_index]
    model = result.network.model

    def predicted(decoder: Any) -> np.ndarray:
        pixels = np.stack([decoder(data, 32) for data in validation]).astype(np.float32)
        return model.predict(pixels, verbose=0).argmax(axis=1)

    before, after = predicted(full_size_pixels), predicted(to_pixels)
    agreement = float((before == after).mean())
    accuracy = float((before == labels[result.validation_index]).mean())
    print(f"agreement {agreement:.4f} on {len(validation)} images; accuracy {accuracy:.3f}")
    assert accuracy > 0.8, "a model this unsure flips on noise: the agreement would be moot"
    assert agreement >= 0.99


class _Quiet:
    """A TrainingObserver that hears nothing and never stops training."""

    def on_progress(self, progress: dict[str, int]) -> None:
        pass

    def on_epoch(self, row: dict[str, float]) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def test_a_phone_photo_with_a_second_image_inside_is_read_as_its_first() -> None:
    """Phones write MPO: a JPEG with another image appended. Its first image is the photo."""
    first = Image.new("RGB", (640, 480), (200, 10, 10))
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[Image.new("RGB", (640, 480), "green")])
    pixels = to_pixels(out.getvalue(), 32)
    assert pixels.shape == (32, 32, 3)
    assert abs(int(pixels[..., 0].mean()) - 200) <= 3 and int(pixels[..., 1].mean()) <= 15
