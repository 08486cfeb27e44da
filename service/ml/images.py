"""Decoding and resizing, one way for training and serving alike (Pillow, no TensorFlow).

The image type is decided by decoding the bytes, never by the file name.

A JPEG is decoded at the size it is needed at: `to_pixels` asks libjpeg for the smallest DCT
scale (1/1, 1/2, 1/4 or 1/8, Pillow's `Image.draft`) that keeps both sides at least
REDUCING_GAP times the model's input size, then resizes as it always did, so the resize is
still a downscale. A 12-megapixel photo costs a third of a full decode or less (smoother
photos less: bench/ingest_photos.py), and its pixels differ from the full decode's by a
fraction of a grey level on average (tests/test_decode.py bounds it). Only the inverse DCT
is reduced: every byte of the entropy-coded data is still decoded, so a truncated or
corrupt file fails as it does at full size. Other formats, and JPEGs under twice
REDUCING_GAP times the size asked for, decode exactly as they are stored.

What a decode may cost. MAX_IMAGE_PIXELS bounds pixels, not cost: a lossless WebP of
7999×7999 px of one colour is 38 bytes to 2.5 KB, and `to_pixels` on it took 1.3–2.7 s and
1 GB. So before any pixel is decoded, `decode_cost` estimates from the header the bytes a
full decode and its RGB copy hold, and `decode` refuses an image costing over
FREE_DECODE_BYTES and over MAX_DECODE_RATIO times its file's size (an image bomb): past the
free allowance, the work an image asks for grows with the bytes sent, as a zip entry's does
with MAX_RATIO. Measured at 7999×7999 px of one colour (bench/hostile_images.py): the
estimate is 0.98–0.99 of the peak memory of the decode, for WebP (16 bytes a pixel: Pillow's
WebP decoder holds an RGBA canvas and a copy of it), PNG (8) and GIF (5); a progressive
JPEG holds every DCT coefficient (2 bytes each) besides its pixels. Those files cost 1,900
(the progressive JPEG) to 27,000,000 (the WebP) times their size, and are refused in under
a millisecond. Real images sit far below the bound: a photo costs 4–40 times its file
(a 12 MP phone JPEG of 3 MB: 96 MB), and any image costing under 64 MiB passes whatever its
content — a blank 4K screenshot's PNG (3840×2160 RGBA), a 300 dpi page scanned at 1 bit,
2048×2048 px of WebP. The cost is of the full decode even where a JPEG is decoded reduced,
so an image accepted at upload is accepted by every later decode (training, thumbnails,
predictions) at whatever size it is decoded.

At most `decode_slots()` decodes run at once in one process (`limit_concurrent_decodes`, the
MAX_CONCURRENT_DECODES setting): the memory of many large images sent at once is bounded by
that many times the largest one's, and threads past it wait their turn.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

# MPO: the JPEG many phone cameras write, with a second (depth or preview) image appended;
# the first image is the photo, read as any JPEG.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP"})
MAX_IMAGE_PIXELS = 64_000_000

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# Reduced pixels stay at least this many times the size asked for, so the bilinear resize
# still filters over two or more of them, as Pillow's `thumbnail` does: a model trained on
# the full decode then predicts the same on 99.5 % of its validation images, against 98 %
# when the DCT scale alone reaches the size (tests/test_decode.py), for a few ms more.
REDUCING_GAP = 2
# imagehash.phash's working size (hash_size 8 × highfreq_factor 4): all the facts need.
PHASH_SIDE = 32
_DECODED = "service.decoded"  # the key of `image.info` that `decode` keeps a _Decoded under
# Any image may cost this much to decode (a 4K screenshot's PNG, 2048×2048 px of WebP);
# past it, at most MAX_DECODE_RATIO times its file's size (the module's docstring).
FREE_DECODE_BYTES = 64 << 20
MAX_DECODE_RATIO = 256
# Bytes one pixel takes in Pillow's memory, by mode; 4 for the modes not named.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Pillow's WebP decoder (libwebp's animation decoder, for every WebP) holds an RGBA canvas
# and a copy of it besides the image: 8 bytes a pixel more (measured: 15.5 in all).
_WEBP_DECODER_BYTES = 8
# A JPEG DCT coefficient is 2 bytes; a progressive JPEG holds all of them until its last scan.
_COEFFICIENT_BYTES = 2


class UndecodableImage(ValueError):
    """The bytes are not an image we accept; the message says why."""


@dataclass(frozen=True)
class _Decoded:
    """What a reduced decode leaves out of the pixels: the stored size, and the region of the
    pixels the stored image covers (a reduced JPEG's last column and row can be part-blocks,
    so a resize must take this box, as Pillow's own `thumbnail` does, or shift the image)."""

    stored_size: tuple[int, int]
    box: tuple[float, float, float, float]


class _Slots:
    """At most `count` decodes at once in this process. A thread holding a slot (`to_pixels`
    around its `decode`) does not wait for a second one, which could deadlock."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"at least one decode at a time, not {count}")
        self.count = count
        self._semaphore = threading.BoundedSemaphore(count)
        self._held = threading.local()

    @contextmanager
    def hold(self) -> Iterator[None]:
        if getattr(self._held, "slot", False):
            yield
            return
        with self._semaphore:
            self._held.slot = True
            try:
                yield
            finally:
                self._held.slot = False


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_slots = _Slots(_usable_cores())


def limit_concurrent_decodes(count: int) -> None:
    """Decode at most `count` images at once in this process; 0: one per usable CPU core
    (decoding is CPU-bound, so more at once would not finish sooner). Set it at start, before
    any decode: a decode already waiting keeps the old limit's turn."""
    global _slots
    _slots = _Slots(count or _usable_cores())


def decode_slots() -> int:
    """How many images this process decodes at once."""
    return _slots.count


@contextmanager
def decoding() -> Iterator[None]:
    """Hold one of the process's decode slots (the module's docstring) for the block: around
    a decode and what is made of its pixels while they are held."""
    with _slots.hold():
        yield


def _pixel_bytes(mode: str) -> int:
    return _PIXEL_BYTES.get(mode, 4)


def decode_cost(image: Image.Image) -> int:
    """The bytes a full decode of an opened, not yet loaded, image holds, with its RGB copy:
    estimated from the header alone (the module's docstring; bench/hostile_images.py compares
    it with what decodes measure)."""
    pixels = image.width * image.height
    cost = pixels * (_pixel_bytes(image.mode) + _pixel_bytes("RGB"))
    if image.format == "WEBP":
        cost += pixels * _WEBP_DECODER_BYTES
    elif image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        cost += int(pixels * _COEFFICIENT_BYTES * _coefficients_per_pixel(image))
    return cost


def _coefficients_per_pixel(image: Image.Image) -> float:
    """DCT coefficients per pixel of a JPEG, over its components: 3 for a colour image stored
    at full resolution, 1.5 with its colours subsampled by two both ways (4:2:0)."""
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * len(image.getbands())
    widest = max(layer[1] for layer in layers) * max(layer[2] for layer in layers)
    return sum(layer[1] * layer[2] for layer in layers) / max(widest, 1)


def allowed_cost(size: int) -> int:
    """The most an image of `size` bytes may cost to decode."""
    return max(FREE_DECODE_BYTES, MAX_DECODE_RATIO * size)


def _check_cost(image: Image.Image, size: int) -> None:
    cost = decode_cost(image)
    if cost > allowed_cost(size):
        raise UndecodableImage(
            f"image too large for its {size} bytes: decoding {image.width}×{image.height} "
            f"px of {image.format} takes about {cost >> 20} MiB, over {MAX_DECODE_RATIO}× "
            f"its size and over {FREE_DECODE_BYTES >> 20} MiB (an image bomb?)"
        )


def decode(data: bytes, *, reduce_to: int | None = None) -> Image.Image:
    """Decode fully (so truncated files fail here); the image in the mode it was stored in.

    With `reduce_to`, a JPEG comes out at the smallest DCT scale whose sides are both at
    least `reduce_to` px (see the module's docstring); other formats at their stored size.
    Either way `stored_size(image)` is the size the file declares, and resizes take
    `covered_box(image)`. UndecodableImage, before any pixel is decoded, for an image that
    would cost more to decode than its size allows (`allowed_cost`).
    """
    try:
        with warnings.catch_warnings(), decoding():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image_format = image.format
            if image_format not in ACCEPTED_FORMATS:
                raise UndecodableImage(
                    f"unsupported image format {image_format}; "
                    f"accepted: {', '.join(sorted(ACCEPTED_FORMATS))}"
                )
            _check_cost(image, len(data))
            declared = image.size
            # None but for a JPEG; Pillow keeps both sides at least `reduce_to`.
            drafted = image.draft("RGB", (reduce_to, reduce_to)) if reduce_to else None
            image.load()
    except UndecodableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UndecodableImage(f"image too large: more than {MAX_IMAGE_PIXELS} pixels") from None
    except Exception as error:  # Pillow raises many kinds for corrupt data
        raise UndecodableImage(f"not a decodable image ({type(error).__name__})") from None
    box = drafted[1] if drafted else (0, 0, *image.size)
    # A value no file's metadata (a PNG text chunk) can forge: the type is checked on reading.
    image.info[_DECODED] = _Decoded(declared, box)
    return image


def _decoded(image: Image.Image) -> _Decoded:
    found = image.info.get(_DECODED)
    return found if isinstance(found, _Decoded) else _Decoded(image.size, (0, 0, *image.size))


def stored_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as stored in the file, even when `decode` reduced the pixels."""
    return _decoded(image).stored_size


def covered_box(image: Image.Image) -> tuple[float, float, float, float]:
    """The region of `image`'s pixels that the stored image covers, for `Image.resize`."""
    return _decoded(image).box


def open_image(data: bytes) -> Image.Image:
    """Decode fully (so truncated files fail here) and return an RGB image."""
    return decode(data).convert("RGB")


@dataclass(frozen=True)
class ImageFacts:
    """What the dataset health report reads about one image, measured once at upload."""

    sha256: str  # of the bytes as uploaded: equal only for byte-identical files
    phash: str  # 64-bit perceptual hash, 16 hex digits: close for the same picture re-encoded
    width: int
    height: int
    mode: str  # Pillow's mode as stored: "RGB", "L", "CMYK", "P", "RGBA"…


def facts_of(data: bytes) -> ImageFacts:
    """The facts of `data` from its decode reduced to the hash's size, in one decode slot;
    UndecodableImage if it is not an image we accept."""
    with decoding():
        return image_facts(data, decode(data, reduce_to=PHASH_SIDE))


def image_facts(data: bytes, image: Image.Image) -> ImageFacts:
    """The facts of `data`, given `image` = `decode(data)` (so the bytes are decoded once),
    or `decode(data, reduce_to=PHASH_SIDE)`: the hash shrinks the image to 32 px anyway, and
    the width and height are the stored ones.

    The perceptual hash is of the RGB conversion, the pixels the model sees: a CMYK or
    palette file and its RGB twin hash alike, as they train alike.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = stored_size(image)
    return ImageFacts(
        sha256=hashlib.sha256(data).hexdigest(),
        phash=str(imagehash.phash(rgb)),
        width=width,
        height=height,
        mode=image.mode,
    )


def to_pixels(data: bytes, size: int) -> np.ndarray:
    """Raw RGB pixels, uint8, shape (size, size, 3): the model's input before float cast.

    Bilinear with antialiasing, no aspect-preserving crop — the behaviour of
    `keras.utils.image_dataset_from_directory` with its defaults, after a JPEG's reduced
    decode (the module's docstring): the one path training, evaluation and serving share.
    """
    with decoding():
        decoded = decode(data, reduce_to=REDUCING_GAP * size)
        image = decoded.convert("RGB")
        # A reduced image is never (size, size) (REDUCING_GAP): this skips only what it did.
        if image.size != (size, size):
            box = covered_box(decoded)
            image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
        return np.asarray(image, dtype=np.uint8)


THUMBNAIL_QUALITY = 85


def thumbnail(data: bytes, size: int, *, enlarge: bool = True) -> bytes:
    """A JPEG of the image whose longer side is `size` px, the aspect ratio kept (the shorter
    side rounded, at least 1 px); smaller images are enlarged, so a grid of them lines up,
    unless `enlarge` is false (then they keep their size).

    The RGB pixels training and serving see (any alpha dropped as they drop it), a JPEG
    decoded reduced as in `to_pixels`; that leaves nothing PNG would keep, and JPEG is the
    smaller.
    """
    with decoding():
        decoded = decode(data, reduce_to=REDUCING_GAP * size)
        image = decoded.convert("RGB")
        # The stored size, not the reduced one, so the rounding is the full-size decode's.
        width, height = stored_size(decoded)
        scale = size / max(width, height)
        if not enlarge:
            scale = min(scale, 1.0)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if target != image.size:
            # reducing_gap: a cheap box reduction first, so megapixels shrink quickly
            image = image.resize(
                target, Image.Resampling.LANCZOS, box=covered_box(decoded), reducing_gap=3.0
            )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()
