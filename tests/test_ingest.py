"""`read_image_zip` on in-memory zips: layouts, stray files, OS junk, unsafe paths, limits.

No server and no TensorFlow: these call the pure function the upload route calls.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from service.datasets.ingest import Archive, BadArchive, Limits, read_image_zip
from tests.conftest import colour_images, make_zip, png_bytes

LIMITS = Limits(max_files=1000, max_image_bytes=1 << 20, max_total_bytes=16 << 20)
PNG = colour_images(per_class=1)["red"][0]
NOT_AN_IMAGE = "not a decodable image"
TOPS = pytest.mark.parametrize("top", ["", "pets/"], ids=["no-top-folder", "top-folder"])


def read(files: dict[str, bytes] | bytes, limits: Limits = LIMITS) -> Archive:
    content = files if isinstance(files, bytes) else make_zip(files)
    return read_image_zip(io.BytesIO(content), limits)


def labels(archive: Archive) -> dict[str, str]:
    """Each image's path from its class folder down → its class."""
    return {image.filename: image.label for image in archive.images}


def reasons(archive: Archive) -> dict[str, str]:
    return {entry["path"]: entry["reason"] for entry in archive.skipped}


def refused(files: dict[str, bytes] | bytes, limits: Limits = LIMITS) -> str:
    with pytest.raises(BadArchive) as caught:
        read(files, limits)
    return str(caught.value)


def random_bytes(count: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(count)


@pytest.mark.parametrize("stray", ["README.txt", "LICENSE", "labels.csv"])
def test_one_top_folder_with_a_stray_file_at_its_top(stray: str) -> None:
    archive = read({"pets/cats/1.png": PNG, "pets/dogs/2.png": PNG, f"pets/{stray}": b"text"})
    assert labels(archive) == {"cats/1.png": "cats", "dogs/2.png": "dogs"}
    assert list(reasons(archive)) == [f"pets/{stray}"]
    assert NOT_AN_IMAGE in reasons(archive)[f"pets/{stray}"]


@TOPS
def test_layouts_with_and_without_a_top_folder(top: str) -> None:
    archive = read({f"{top}cats/1.png": PNG, f"{top}cats/2.png": PNG, f"{top}dogs/3.png": PNG})
    assert labels(archive) == {"cats/1.png": "cats", "cats/2.png": "cats", "dogs/3.png": "dogs"}
    assert archive.class_counts == {"cats": 2, "dogs": 1}
    assert archive.skipped == []
    assert all(image.data == PNG for image in archive.images)


@TOPS
def test_stray_files_at_every_level_are_skipped_and_listed(top: str) -> None:
    strays = ["README.md", f"{top}labels.csv", f"{top}cats/notes.txt", f"{top}cats/in/cam.json"]
    images = [f"{top}cats/1.png", f"{top}cats/in/2.png", f"{top}dogs/3.png"]
    archive = read({name: b"not pixels" for name in strays} | dict.fromkeys(images, PNG))
    assert labels(archive) == {"cats/1.png": "cats", "cats/in/2.png": "cats", "dogs/3.png": "dogs"}
    assert set(reasons(archive)) == set(strays)
    assert all(NOT_AN_IMAGE in reason for reason in reasons(archive).values())


@TOPS
def test_images_outside_class_folders_are_skipped_and_do_not_decide_the_layout(top: str) -> None:
    files = {"cover.png": PNG, f"{top}cats/1.png": PNG, f"{top}dogs/2.png": PNG}
    if top:
        files[f"{top}preview.png"] = PNG
    archive = read(files)
    assert labels(archive) == {"cats/1.png": "cats", "dogs/2.png": "dogs"}
    outside = {"cover.png", f"{top}preview.png"} if top else {"cover.png"}
    assert reasons(archive) == dict.fromkeys(outside, "not inside a class folder")


def test_operating_system_files_are_left_out_without_a_word() -> None:
    files = {
        "__MACOSX/pets/cats/._1.png": b"\x00\x05\x16\x07AppleDouble",
        "__MACOSX/pets/cats/real.png": PNG,  # even an image there is the OS's, not a class
        "pets/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "pets/cats/Thumbs.db": b"\xd0\xcf\x11\xe0",
        "pets/dogs/THUMBS.DB": b"\xd0\xcf\x11\xe0",
        "pets/dogs/desktop.ini": b"[.ShellClassInfo]",
        "pets/.hidden/1.png": PNG,
        "pets/cats/.1.png": PNG,
        "pets/cats/1.png": PNG,
        "pets/dogs/2.png": PNG,
    }
    archive = read(files)
    assert labels(archive) == {"cats/1.png": "cats", "dogs/2.png": "dogs"}
    assert archive.skipped == []


def test_nested_folders_belong_to_their_class_folder() -> None:
    archive = read({"cats/indoor/a/1.png": PNG, "cats/outdoor/2.png": PNG, "dogs/3.png": PNG})
    assert labels(archive) == {
        "cats/indoor/a/1.png": "cats",
        "cats/outdoor/2.png": "cats",
        "dogs/3.png": "dogs",
    }
    wrapped = read({"pets/cats/indoor/1.png": PNG, "pets/dogs/2.png": PNG})
    assert labels(wrapped) == {"cats/indoor/1.png": "cats", "dogs/2.png": "dogs"}


def test_images_are_found_by_decoding_not_by_name() -> None:
    archive = read(
        {
            "cats/photo.txt": PNG,
            "cats/no_extension": png_bytes(np.zeros((8, 8, 3), np.uint8), "JPEG"),
            "dogs/1.png": PNG,
            "dogs/2.png": b"just text named .png",
        }
    )
    assert labels(archive) == {
        "cats/no_extension": "cats",
        "cats/photo.txt": "cats",
        "dogs/1.png": "dogs",
    }
    assert list(reasons(archive)) == ["dogs/2.png"]


@pytest.mark.parametrize(
    ("files", "found"),
    [
        ({"cats/1.png": PNG, "cats/2.png": PNG, "dogs/notes.txt": b"x"}, "found 'cats'"),
        ({"pets/1.png": PNG, "pets/2.png": PNG}, "found 'pets'"),
        ({"1.png": PNG, "2.png": PNG}, "found none"),
        ({"cats/a.txt": b"x", "dogs/b.txt": b"y"}, "found none"),
    ],
    ids=["one-class", "one-folder-of-images", "no-folders", "no-images"],
)
def test_fewer_than_two_classes_is_refused_saying_what_was_found(
    files: dict[str, bytes], found: str
) -> None:
    message = refused(files)
    assert "at least 2 class folders" in message and found in message


def test_not_a_zip_is_refused() -> None:
    assert refused(b"plain text, not a zip") == "file is not a zip archive"
    assert refused(PNG) == "file is not a zip archive"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../x.png", "contains '..'"),
        ("cats/../../x.png", "contains '..'"),
        ("cats\\..\\..\\x.png", "contains '..'"),
        ("__MACOSX/../x.png", "contains '..'"),
        ("/etc/x.png", "is absolute"),
        ("\\windows\\x.png", "is absolute"),
        ("C:/x.png", "is absolute"),
    ],
)
def test_unsafe_paths_refuse_the_whole_zip(name: str, expected: str) -> None:
    message = refused({"cats/1.png": PNG, "dogs/2.png": PNG, name: PNG})
    assert message.startswith("unsafe path in zip") and expected in message


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_a_name_twice_refuses_the_whole_zip() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("cats/1.png", "dogs/2.png", "cats/1.png"):
            archive.writestr(name, PNG)
    assert "'cats/1.png' twice" in refused(buffer.getvalue())


def test_folder_entries_are_not_files() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("pets/", "pets/cats/", "pets/dogs/", "pets/empty/"):
            archive.writestr(name, b"")
        archive.writestr("pets/cats/1.png", PNG)
        archive.writestr("pets/dogs/2.png", PNG)
    archive = read(buffer.getvalue())
    assert archive.class_counts == {"cats": 1, "dogs": 1} and archive.skipped == []


def test_entry_count_includes_every_entry() -> None:
    files = {"cats/1.png": PNG, "dogs/2.png": PNG, ".DS_Store": b"", "__MACOSX/._x": b""}
    limits = Limits(max_files=3, max_image_bytes=1 << 20, max_total_bytes=1 << 20)
    assert refused(files, limits) == "zip has 4 entries; the limit is 3"
    assert read(files, Limits(4, 1 << 20, 1 << 20)).class_counts == {"cats": 1, "dogs": 1}


def test_an_image_over_the_per_image_limit_is_skipped() -> None:
    big = png_bytes(np.frombuffer(random_bytes(200 * 200 * 3), np.uint8).reshape(200, 200, 3))
    limits = Limits(max_files=10, max_image_bytes=len(big) - 1, max_total_bytes=1 << 22)
    archive = read({"cats/1.png": PNG, "cats/big.png": big, "dogs/2.png": PNG}, limits)
    assert archive.class_counts == {"cats": 1, "dogs": 1}
    assert reasons(archive) == {"cats/big.png": f"larger than the {len(big) - 1}-byte image limit"}


def deflated(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_bomb_anywhere_refuses_the_whole_zip() -> None:
    # A stray file beside the class folders is read too: a bomb cannot hide outside them.
    bomb = deflated({"pets/cats/1.png": PNG, "pets/dogs/2.png": PNG, "pets/x.txt": bytes(8 << 20)})
    assert len(bomb) < 100_000
    message = refused(bomb)
    assert "'pets/x.txt' inflates to over 100× its compressed size" in message


def test_bytes_are_counted_across_the_whole_zip() -> None:
    # Each file is incompressible and under the per-image cap; their sum is over the limit.
    strays = {f"pets/notes/{n}.bin": random_bytes(100_000, seed=n) for n in range(12)}
    files = {"pets/cats/1.png": PNG, "pets/dogs/2.png": PNG, **strays}
    limits = Limits(max_files=100, max_image_bytes=1 << 20, max_total_bytes=1_000_000)
    assert refused(deflated(files), limits) == "zip unpacks to more than 1000000 bytes"
    assert read(deflated(files), Limits(100, 1 << 20, 2_000_000)).class_counts == {
        "cats": 1,
        "dogs": 1,
    }


def test_a_corrupt_entry_is_skipped_naming_why() -> None:
    content = bytearray(make_zip({"cats/1.png": PNG, "cats/2.png": PNG, "dogs/3.png": PNG}))
    with zipfile.ZipFile(io.BytesIO(bytes(content))) as archive:
        info = archive.getinfo("cats/2.png")
    data_start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    content[data_start + 100] ^= 0xFF  # stored, not deflated: the CRC check catches it
    archive = read(bytes(content))
    assert archive.class_counts == {"cats": 1, "dogs": 1}
    assert reasons(archive)["cats/2.png"].startswith("corrupt entry: Bad CRC-32")
