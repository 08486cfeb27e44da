"""Uploads at photo size: the upload check on twelve-megapixel JPEGs, reduced decode against
the full decode it replaced, both measured in this run.

    python bench/ingest_photos.py [--photos 200] [--distinct 20] [--repeat 1]
                                  [--photo-size 4000 3000] [--quick]

Photos: scikit-learn's two sample photographs (640×427), cropped and tinted at random,
upscaled to 4000×3000 with ±12 grey levels of grain, so they weigh what phone photos weigh
(about 3 MB: the entropy-coded data, which a reduced decode still reads in full), saved as
JPEG (quality 90) in a temporary folder, then zipped (stored, as photos barely compress)
into two class folders. `--distinct` of them are encoded and repeated up to `--photos`: the
check neither knows nor cares.
1. `read_image_zip` as it is (each JPEG decoded reduced to the perceptual hash's 32 px)
   against the same call with the full decode it did before (`ingest.decode` without
   `reduce_to`): seconds per photo, and `ingest_photo_ratio` = new ÷ old (lower is better).
2. The facts both ways: sizes and modes identical, the perceptual hashes' Hamming distances
   (near-duplicates are found within 6 of 64 bits).
3. `to_pixels` at 224 px (what /predict and training pay per photo) against the full decode
   and the same resize: `decode_224_ratio` = new ÷ old.

Everything runs in this process; the last line is machine-readable.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imagehash
import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

from bench.quick import parse_args
from service.datasets import ingest
from service.datasets.ingest import Archive, Limits, read_image_zip
from service.ml import images

PHOTO_SIZE = (4000, 3000)
LIMITS = Limits(max_files=100_000, max_image_bytes=1 << 26, max_total_bytes=1 << 34)
SOURCES = ("china.jpg", "flower.jpg")


def photo(rng: np.random.Generator, grain: int, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    """A crop of a sample photograph, tinted a little, upscaled to twelve megapixels, with
    sensor-like grain: an upscale alone is smoother, so lighter to decode, than a photo."""
    source = load_sample_image(SOURCES[int(rng.integers(len(SOURCES)))])
    height, width = source.shape[:2]
    left, top = int(rng.integers(0, width // 8)), int(rng.integers(0, height // 8))
    crop = source[top : top + height * 7 // 8, left : left + width * 7 // 8].astype(np.float32)
    tinted = np.clip(crop * rng.uniform(0.85, 1.15, 3), 0, 255).astype(np.uint8)
    large = np.asarray(Image.fromarray(tinted).resize(size, Image.Resampling.BICUBIC))
    noise = rng.integers(-grain, grain + 1, large.shape, dtype=np.int16)
    return Image.fromarray(np.clip(large + noise, 0, 255).astype(np.uint8))


def photo_zip(
    folder: Path,
    count: int,
    distinct: int,
    grain: int,
    seed: int = 0,
    size: tuple[int, int] = PHOTO_SIZE,
) -> bytes:
    """The zip of `count` photos, `distinct` of them encoded (and written to `folder`)."""
    rng = np.random.default_rng(seed)
    paths = []
    for number in range(distinct):
        path = folder / f"{number:03d}.jpg"
        photo(rng, grain, size).save(path, "JPEG", quality=90)
        paths.append(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for number in range(count):
            label = ("beach", "garden")[number % 2]
            archive.write(paths[number % distinct], f"{label}/{number:04d}.jpg")
    return buffer.getvalue()


def median_seconds(call: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The median wall time of `repeat` calls, and the last call's answer."""
    times, answer = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        answer = call()
        times.append(time.perf_counter() - began)
    return float(np.median(times)), answer


def full_decode(data: bytes, *, reduce_to: int | None = None) -> Any:
    """The upload check's decode before the change: every pixel, whatever was asked."""
    return images.decode(data)


def ingest_both_ways(content: bytes, repeat: int) -> tuple[float, float, Archive, Archive]:
    """Seconds for the reduced and the full-decode upload check, and both archives."""
    read = lambda: read_image_zip(io.BytesIO(content), LIMITS)  # noqa: E731
    read()  # warm: imports, page cache
    new_seconds, new = median_seconds(read, repeat)
    reduced = ingest.decode
    ingest.decode = full_decode  # type: ignore[assignment]
    try:
        old_seconds, old = median_seconds(read, repeat)
    finally:
        ingest.decode = reduced  # type: ignore[assignment]
    return new_seconds, old_seconds, new, old


def hash_distances(new: Archive, old: Archive) -> np.ndarray:
    """Hamming distance of each photo's two hashes; the other facts must be identical."""
    distances = []
    for reduced, full in zip(new.images, old.images, strict=True):
        a, b = reduced.facts, full.facts
        assert (a.sha256, a.width, a.height, a.mode) == (b.sha256, b.width, b.height, b.mode)
        distances.append(imagehash.hex_to_hash(a.phash) - imagehash.hex_to_hash(b.phash))
    return np.asarray(distances)


def full_size_pixels(data: bytes, size: int) -> np.ndarray:
    """`to_pixels` before the change: every pixel decoded, then the same resize."""
    image = images.open_image(data)
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def decode_figures(photos: list[bytes], repeat: int) -> dict[str, float]:
    """ms per photo for `to_pixels` at 224 px both ways, and their mean pixel difference."""
    figures: dict[str, float] = {}
    for name, decoder in (("new", images.to_pixels), ("old", full_size_pixels)):
        seconds, _ = median_seconds(lambda d=decoder: [d(data, 224) for data in photos], repeat)
        figures[f"decode_224_{name}_ms"] = seconds * 1000 / len(photos)
    differences = [
        np.abs(images.to_pixels(data, 224).astype(np.int16) - full_size_pixels(data, 224)).mean()
        for data in photos
    ]
    figures["decode_224_ratio"] = figures["decode_224_new_ms"] / figures["decode_224_old_ms"]
    figures["decode_224_mean_pixel_difference"] = float(np.mean(differences))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--distinct", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--grain", type=int, default=12, help="± grey levels of noise")
    parser.add_argument("--photo-size", type=int, nargs=2, default=PHOTO_SIZE, help="W H, px")
    args = parse_args(parser, {"photos": 6, "distinct": 2, "repeat": 1, "photo_size": (1024, 768)})
    width, height = args.photo_size
    with tempfile.TemporaryDirectory() as directory:
        content = photo_zip(
            Path(directory),
            args.photos,
            min(args.distinct, args.photos),
            args.grain,
            size=(width, height),
        )
        photos = [path.read_bytes() for path in sorted(Path(directory).glob("*.jpg"))]
    megabytes = np.mean([len(data) for data in photos]) / 1e6
    print(
        f"{args.photos} photos of {width}×{height} ({megabytes:.1f} MB each): "
        f"{len(content) >> 20} MiB zip"
    )
    new_seconds, old_seconds, new, old = ingest_both_ways(content, args.repeat)
    per_photo = {
        name: s * 1000 / args.photos for name, s in (("new", new_seconds), ("old", old_seconds))
    }
    print(
        f"upload check: {old_seconds:.2f} s before ({per_photo['old']:.1f} ms per photo), "
        f"{new_seconds:.2f} s now ({per_photo['new']:.1f} ms per photo)"
    )
    distances = hash_distances(new, old)
    print(
        f"perceptual hash, reduced vs full decode: Hamming mean {distances.mean():.2f}, "
        f"max {distances.max()} of 64 bits; sizes, modes and SHA-256 identical"
    )
    figures = {
        "ingest_photo_ratio": new_seconds / old_seconds,
        "ingest_old_ms_per_photo": per_photo["old"],
        "ingest_new_ms_per_photo": per_photo["new"],
        "phash_hamming_max": float(distances.max()),
        **decode_figures(photos, args.repeat),
    }
    print(
        f"to_pixels at 224 px: {figures['decode_224_old_ms']:.1f} ms before, "
        f"{figures['decode_224_new_ms']:.1f} ms now per photo; mean pixel difference "
        f"{figures['decode_224_mean_pixel_difference']:.3f} of 255"
    )
    print(" ".join(f"{name}={value:.4f}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
