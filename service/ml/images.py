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
"""

from __future__ import annotations

import hashlib
import io
import warnings
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


class UndecodableImage(ValueError):
    """The bytes are not an image we accept; the message says why."""


@dataclass(frozen=True)
class _Decoded:
    """What a reduced decode leaves out of the pixels: the stored size, and the region of the
    pixels the stored image covers (a reduced JPEG's last column and row can be part-blocks,
    so a resize must take this box, as Pillow's own `thumbnail` does, or shift the image)."""

    stored_size: tuple[int, int]
    box: tuple[float, float, float, float]


def decode(data: bytes, *, reduce_to: int | None = None) -> Image.Image:
    """Decode fully (so truncated files fail here); the image in the mode it was stored in.

    With `reduce_to`, a JPEG comes out at the smallest DCT scale whose sides are both at
    least `reduce_to` px (see the module's docstring); other formats at their stored size.
    Either way `stored_size(image)` is the size the file declares, and resizes take
    `covered_box(image)`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image_format = image.format
            if image_format not in ACCEPTED_FORMATS:
                raise UndecodableImage(
                    f"unsupported image format {image_format}; "
                    f"accepted: {', '.join(sorted(ACCEPTED_FORMATS))}"
                )
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
    decoded = decode(data, reduce_to=REDUCING_GAP * size)
    image = decoded.convert("RGB")
    # A reduced image is never (size, size) (REDUCING_GAP), so this skips only what it did.
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=covered_box(decoded))
    return np.asarray(image, dtype=np.uint8)


THUMBNAIL_QUALITY = 85


def thumbnail(data: bytes, size: int) -> bytes:
    """A JPEG of the image whose longer side is `size` px, the aspect ratio kept (the shorter
    side rounded, at least 1 px); smaller images are enlarged, so a grid of them lines up.

    The RGB pixels training and serving see (any alpha dropped as they drop it), a JPEG
    decoded reduced as in `to_pixels`; that leaves nothing PNG would keep, and JPEG is the
    smaller.
    """
    decoded = decode(data, reduce_to=REDUCING_GAP * size)
    image = decoded.convert("RGB")
    # The stored size, not the reduced one, so the rounding is the full-size decode's.
    width, height = stored_size(decoded)
    scale = size / max(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target != image.size:
        # reducing_gap: a cheap box reduction first, so a photo of megapixels shrinks quickly
        image = image.resize(
            target, Image.Resampling.LANCZOS, box=covered_box(decoded), reducing_gap=3.0
        )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()
