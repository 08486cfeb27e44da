"""What one request may cost: images refused from their header when they would decode to far
more than their size, decodes bounded in number, a zip's entries counted before its
directory is read, explained labels capped, and a batch's zip no larger than the database
stores. Each test holds a limit at its edge with small crafted files.
"""

from __future__ import annotations

import base64
import io
import sqlite3
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile
from sklearn.datasets import load_sample_image
from sqlalchemy import event

from service.datasets.ingest import BadArchive, Limits, read_image_zip
from service.ml import images
from service.ml.images import UndecodableImage, decode, facts_of, thumbnail, to_pixels
from service.predictions.serving import MAX_EXPLAIN_TOP_K
from tests.conftest import (
    Service,
    class_zip,
    colour_images,
    make_settings,
    make_zip,
    post_zip,
    stored_model,
)


def encoded(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(side: int, colour_type: int = 2, bit_depth: int = 8) -> bytes:
    """A valid PNG of side × side zero pixels, compressed as well as deflate can."""
    channels = {0: 1, 2: 3, 3: 1, 6: 4}[colour_type]
    row = 1 + (side * channels * bit_depth + 7) // 8
    header = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, 0)
    palette = png_chunk(b"PLTE", b"\x00\x00\x00") if colour_type == 3 else b""
    pixels = png_chunk(b"IDAT", zlib.compress(bytes(row * side), 9))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + palette
        + pixels
        + png_chunk(b"IEND", b"")
    )


def rle_bmp(side: int) -> bytes:
    """An 8-bit BMP of side × side pixels of one colour, run-length encoded (BI_RLE8)."""
    runs = b"\xff\x00" * (side // 255) + bytes((side % 255, 0))
    pixels = (runs + b"\x00\x00") * side + b"\x00\x01"  # rows, then the end of the bitmap
    palette = b"\x00\x00\x00\x00\xff\xff\xff\x00"
    offset = 14 + 40 + len(palette)
    header = struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 2, 0)
    return header + info + palette + pixels


def one_colour(side: int, image_format: str, mode: str = "RGB", **options: Any) -> bytes:
    return encoded(Image.new(mode, (side, side)), image_format, **options)


# Each a little over FREE_DECODE_BYTES (64 MiB) to decode, and hundreds to millions of times
# its size: refused from its header. Sides kept small enough to be made in well under a second.
BOMBS: dict[str, Callable[[], bytes]] = {
    "webp-lossless": lambda: one_colour(2100, "WEBP", lossless=True, method=0),
    "webp-lossy": lambda: one_colour(2100, "WEBP", quality=50, method=0),
    "png-rgb": lambda: blank_png(2900),
    "png-rgba": lambda: blank_png(2900, colour_type=6),
    "png-1-bit": lambda: blank_png(3700, colour_type=0, bit_depth=1),
    "png-palette": lambda: blank_png(3700, colour_type=3),
    "png-16-bit-grey": lambda: blank_png(3400, colour_type=0, bit_depth=16),
    "gif": lambda: one_colour(3700, "GIF", mode="P"),
    "bmp-rle8": lambda: rle_bmp(3700),
    "jpeg-progressive": lambda: one_colour(2600, "JPEG", progressive=True),
    "jpeg-baseline": lambda: one_colour(2900, "JPEG", quality=50),
}


@cache
def bomb(name: str) -> bytes:
    return BOMBS[name]()


@pytest.fixture
def nothing_large_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any image over 2 megapixels gets as far as decoding its pixels."""
    load = ImageFile.ImageFile.load

    def guarded(image: ImageFile.ImageFile) -> Any:
        assert image.width * image.height <= 2_000_000, f"{image.size} decoded"
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded)


@pytest.mark.usefixtures("nothing_large_decoded")
@pytest.mark.parametrize("name", BOMBS)
def test_an_image_costing_far_more_than_its_bytes_is_refused_before_decoding(name: str) -> None:
    data = bomb(name)
    assert images.decode_cost(Image.open(io.BytesIO(data))) > images.allowed_cost(len(data))
    # The upload check, /predict and training, a thumbnail, the reduced decodes: each refuses.
    for attempt in (
        lambda: facts_of(data),
        lambda: to_pixels(data, 224),
        lambda: thumbnail(data, 256),
        lambda: decode(data, reduce_to=images.PHASH_SIDE),
        lambda: decode(data),
    ):
        with pytest.raises(UndecodableImage, match=f"too large for its {len(data)} bytes"):
            attempt()


@cache
def phone_photo(progressive: bool) -> bytes:
    """A 12-megapixel photo as a phone saves it (4000×3000, quality 90)."""
    photo = Image.fromarray(load_sample_image("china.jpg")).resize((4000, 3000))
    grain = np.random.default_rng(0).integers(-12, 13, (3000, 4000, 1), dtype=np.int16)
    pixels = np.clip(np.asarray(photo, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    return encoded(Image.fromarray(pixels), "JPEG", quality=90, progressive=progressive)


def screenshot(width: int, height: int) -> bytes:
    """A screenshot-like PNG: flat panels, lines of text, mostly background."""
    image = Image.new("RGBA", (width, height), (246, 246, 246, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 60), fill=(40, 44, 52, 255))
    draw.rectangle((0, 60, 300, height), fill=(230, 232, 236, 255))
    for line in range(70, height - 20, 24):
        draw.text((320, line), f"line {line}: the quick brown fox jumps over", fill="black")
    return encoded(image, "PNG")


LEGIT: dict[str, Callable[[], bytes]] = {
    "phone-photo": lambda: phone_photo(False),
    "phone-photo-progressive": lambda: phone_photo(True),
    "screenshot-1440p": lambda: screenshot(2560, 1440),
    "screenshot-4k": lambda: screenshot(3840, 2160),
    "blank-screenshot-8-megapixels": lambda: blank_png(2896, colour_type=6),
    "blank-scan-300-dpi-1-bit": lambda: blank_png(3508, colour_type=0, bit_depth=1),
}


@pytest.mark.parametrize("name", LEGIT)
def test_photos_screenshots_and_scans_are_still_accepted(name: str) -> None:
    data = LEGIT[name]()
    facts = facts_of(data)
    assert facts.width * facts.height > 3_000_000
    assert to_pixels(data, 224).shape == (224, 224, 3)


def test_the_cost_allowed_grows_with_the_file_past_the_free_allowance() -> None:
    assert images.allowed_cost(1) == images.FREE_DECODE_BYTES
    past = images.FREE_DECODE_BYTES // images.MAX_DECODE_RATIO + 1
    assert images.allowed_cost(past) == images.MAX_DECODE_RATIO * past
    # A costly image is accepted once its file is large enough: the bound is proportion.
    header = Image.open(io.BytesIO(bomb("png-rgb")))
    cost = images.decode_cost(header)
    assert cost > images.FREE_DECODE_BYTES
    assert images.allowed_cost(-(-cost // images.MAX_DECODE_RATIO)) >= cost


@pytest.fixture
def decode_slots() -> Iterator[Callable[[int], None]]:
    before = images.decode_slots()
    yield images.limit_concurrent_decodes
    images.limit_concurrent_decodes(before)


def test_decodes_at_once_are_bounded_by_the_setting(
    decode_slots: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    decode_slots(2)
    active, most = 0, 0
    lock = threading.Lock()
    load = ImageFile.ImageFile.load

    def slow_load(image: ImageFile.ImageFile) -> Any:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", slow_load)
    data = encoded(Image.new("RGB", (64, 64), "red"), "PNG")
    threads = [threading.Thread(target=to_pixels, args=(data, 32)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2


def test_the_api_takes_the_setting(tmp_path: Path, decode_slots: Callable[[int], None]) -> None:
    service = Service(make_settings(tmp_path, max_concurrent_decodes=3))
    try:
        assert images.decode_slots() == 3
    finally:
        service.close()
    decode_slots(0)  # 0: one per usable core
    assert images.decode_slots() >= 1


def placeholder_model(service: Service) -> str:
    row = stored_model(None, classes=["a", "b", "c"])
    with service.database.session(write=True) as session:
        session.add(row)
    return row.id


@pytest.mark.any_database
def test_costly_images_are_4xx_naming_the_file_wherever_they_are_sent(
    service: Service, nothing_large_decoded: None
) -> None:
    """/predict (multipart, JSON, TF Serving's shape) answers 400 naming the image; an
    upload lists it as skipped with the reason, storing the rest."""
    model_id = placeholder_model(service)
    data = bomb("webp-lossless")
    fine = encoded(Image.new("RGB", (40, 40), "red"), "PNG")
    response = service.client.post(
        "/predict",
        data={"model_id": model_id},
        files=[("files", ("fine.png", fine, "image/png")), ("files", ("b.webp", data, "x/y"))],
    )
    assert response.status_code == 400, response.text
    assert "files[1] 'b.webp'" in response.json()["detail"]
    assert "too large for its" in response.json()["detail"]
    instances = [{"b64": base64.b64encode(data).decode()}]
    for path, body in (
        ("/predict", {"model_id": model_id, "instances": instances}),
        (f"/v1/models/{model_id}:predict", {"instances": instances}),
    ):
        response = service.client.post(path, json=body)
        assert response.status_code == 400, response.text
        assert "instances[0]" in response.json()["detail"], response.text
    files = {
        f"set/{label}/{n}.png": item
        for label, items in colour_images(2).items()
        for n, item in enumerate(items)
    }
    files |= {f"set/red/bomb-{name}": bomb(name) for name in ("webp-lossless", "png-1-bit", "gif")}
    response = post_zip(service, make_zip(files))
    assert response.status_code == 201, response.text
    skipped = {entry["path"]: entry["reason"] for entry in response.json()["skipped"]}
    assert set(skipped) == {f"set/red/bomb-{n}" for n in ("webp-lossless", "png-1-bit", "gif")}
    assert all("too large for its" in reason for reason in skipped.values()), skipped


@pytest.mark.any_database
def test_the_api_answers_while_a_request_decodes(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/predict decodes in a worker thread: the event loop, and every other route, go on."""
    model_id = placeholder_model(service)
    decoding, release = threading.Event(), threading.Event()
    real = images.decode

    def held(data: bytes, **options: Any) -> Image.Image:
        decoding.set()
        release.wait(10)
        return real(data, **options)

    monkeypatch.setattr(images, "decode", held)
    fine = encoded(Image.new("RGB", (40, 40), "red"), "PNG")
    sent = threading.Thread(
        target=service.client.post,
        args=("/predict",),
        kwargs={"data": {"model_id": model_id}, "files": [("files", ("a.png", fine, "x/y"))]},
    )
    sent.start()
    try:
        assert decoding.wait(10)
        started = time.monotonic()
        assert service.client.get("/healthz").status_code == 200
        assert time.monotonic() - started < 2
    finally:
        release.set()
        sent.join()


# -- a zip's entries, counted before its directory is read -------------------------------------


def empty_entries(count: int) -> bytes:
    return make_zip({f"e/{number}.txt": b"" for number in range(count)})


def with_end_record(content: bytes, entries: int) -> bytes:
    """`content` with its end record declaring `entries` entries (a lie, if it differs)."""
    data = bytearray(content)
    at = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, at + 8, entries, entries)
    return bytes(data)


def as_zip64(content: bytes) -> bytes:
    """`content` rewritten with zip64 end records (as a zip of over 65,535 entries has),
    the classic end record saying 0xFFFF."""
    at = content.rfind(b"PK\x05\x06")
    _, _, _, _, entries, size, offset, _ = struct.unpack_from("<4s4H2LH", content, at)
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, offset
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, size, offset, 0)
    return content[:at] + record + locator + end


def with_comment(content: bytes) -> bytes:
    """`content` with a comment after its end record: the record is then found by a search."""
    comment = b"written by a tool that signs its zips " * 20
    return content[:-2] + struct.pack("<H", len(comment)) + comment


@pytest.fixture
def directory_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each time `zipfile` reads a zip's central directory."""
    reads: list[int] = []
    real = zipfile.ZipFile._RealGetContents  # type: ignore[attr-defined]

    def counted(archive: zipfile.ZipFile) -> None:
        reads.append(1)
        real(archive)

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", counted)
    return reads


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda content: content, id="declared"),
        pytest.param(as_zip64, id="zip64"),
        pytest.param(lambda content: with_end_record(content, 1), id="count-understated"),
        pytest.param(lambda content: with_comment(as_zip64(content)), id="zip64-comment"),
    ],
)
def test_too_many_entries_are_refused_before_the_directory_is_read(
    shape: Callable[[bytes], bytes], directory_reads: list[int]
) -> None:
    limits = Limits(max_files=50, max_image_bytes=1 << 20, max_total_bytes=1 << 30)
    content = shape(empty_entries(51))
    assert len(zipfile.ZipFile(io.BytesIO(content)).infolist()) == 51  # zipfile reads them
    directory_reads.clear()
    with pytest.raises(BadArchive, match="entries; the limit is 50"):
        read_image_zip(io.BytesIO(content), limits)
    assert directory_reads == []
    # At the limit, the same shapes are read as before.
    images_zip = shape(class_zip(colour_images(per_class=16)))
    assert len(zipfile.ZipFile(io.BytesIO(images_zip)).infolist()) <= 50
    assert len(read_image_zip(io.BytesIO(images_zip), limits).images) == 48


def test_a_zip_with_a_comment_is_still_found() -> None:
    buffer = io.BytesIO(class_zip(colour_images(per_class=2)))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.comment = b"made by a tool that writes comments " * 100
    limits = Limits(max_files=6, max_image_bytes=1 << 20, max_total_bytes=1 << 30)
    assert len(read_image_zip(io.BytesIO(buffer.getvalue()), limits).images) == 6


def test_batch_prediction_and_upload_zips_are_counted_first(
    tmp_path: Path, directory_reads: list[int]
) -> None:
    service = Service(make_settings(tmp_path, max_dataset_files=50))
    try:
        model_id = placeholder_model(service)
        content = as_zip64(empty_entries(300))
        directory_reads.clear()
        response = post_zip(service, content)
        assert response.status_code == 400 and "300 entries" in response.json()["detail"]
        response = service.client.post(
            "/predictions",
            data={"model_id": model_id},
            files={"file": ("many.zip", content, "application/zip")},
        )
        assert response.status_code == 400, response.text
        assert "many.zip: zip has 300 entries" in response.json()["detail"]
        assert directory_reads == []
    finally:
        service.close()


# -- explain's work per request -----------------------------------------------------------------


@pytest.mark.any_database
def test_explain_draws_at_most_a_few_maps_per_image(service: Service) -> None:
    model_id = placeholder_model(service)
    fine = encoded(Image.new("RGB", (40, 40), "red"), "PNG")
    over = MAX_EXPLAIN_TOP_K + 1
    form = {"model_id": model_id, "explain": "true", "top_k": str(over)}
    response = service.client.post("/predict", data=form, files=[("files", ("a.png", fine))])
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "top_k"] and str(MAX_EXPLAIN_TOP_K) in error["msg"]
    body = {
        "model_id": model_id,
        "instances": [{"b64": base64.b64encode(fine).decode()}],
        "explain": True,
        "top_k": 1000,
    }
    response = service.client.post("/predict", json=body)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "top_k"
    batch = service.client.post(
        "/predictions",
        data={"model_id": model_id, "explain": "true", "top_k": str(over)},
        files={"file": ("a.zip", make_zip({"a.png": fine}), "application/zip")},
    )
    assert batch.status_code == 422, batch.text
    assert batch.json()["detail"][0]["loc"][-1] == "top_k"
    # Without explain, top_k keeps its range; with it, up to the bound is still accepted.
    plain = service.client.post(
        "/predictions",
        data={"model_id": model_id, "top_k": "1000"},
        files={"file": ("a.zip", make_zip({"a.png": fine}), "application/zip")},
    )
    assert plain.status_code == 202, plain.text
    explained = service.client.post(
        "/predictions",
        data={"model_id": model_id, "explain": "true", "top_k": str(MAX_EXPLAIN_TOP_K)},
        files={"file": ("a.zip", make_zip({"a.png": fine}), "application/zip")},
    )
    assert explained.status_code == 202, explained.text


# -- a batch's zip and the database's largest value --------------------------------------------


def test_a_batch_zip_larger_than_the_database_stores_is_413_naming_the_limit(
    tmp_path: Path,
) -> None:
    """SQLite's SQLITE_LIMIT_LENGTH (1,000,000,000 bytes by default, under the 1 GiB body
    limit) lowered on the API's connections to 300 KB: the limit is read, not assumed."""
    service = Service(make_settings(tmp_path))
    try:
        model_id = placeholder_model(service)
        engine = service.client.app.state.database.engine  # type: ignore[attr-defined]
        limit = 300_000

        def lowered(connection: sqlite3.Connection, _record: Any) -> None:
            connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limit)

        event.listen(engine, "connect", lowered)
        engine.dispose()  # connections opened before keep their limit: open new ones
        rng = np.random.default_rng(0)
        for size, expected in ((limit - 100_000, 202), (limit + 1000, 413)):
            content = make_zip({"noise.bin": rng.bytes(size)})
            response = service.client.post(
                "/predictions",
                data={"model_id": model_id},
                files={"file": ("big.zip", content, "application/zip")},
            )
            assert response.status_code == expected, response.text
        detail = response.json()["detail"]
        assert "big.zip" in detail and f"at most {limit - 65536} bytes" in detail
    finally:
        service.close()
