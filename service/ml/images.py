"""Decoding and resizing, one way for training and serving alike (Pillow, no TensorFlow).

The image type is decided by decoding the bytes, never by the file name.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF", "WEBP"})
MAX_IMAGE_PIXELS = 64_000_000

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class UndecodableImage(ValueError):
    """The bytes are not an image we accept; the message says why."""


def decode(data: bytes) -> Image.Image:
    """Decode fully (so truncated files fail here); the image in the mode it was stored in."""
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
            image.load()
    except UndecodableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UndecodableImage(f"image too large: more than {MAX_IMAGE_PIXELS} pixels") from None
    except Exception as error:  # Pillow raises many kinds for corrupt data
        raise UndecodableImage(f"not a decodable image ({type(error).__name__})") from None
    return image


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
    """The facts of `data`, given `image` = `decode(data)` (so the bytes are decoded once).

    The perceptual hash is of the RGB conversion, the pixels the model sees: a CMYK or
    palette file and its RGB twin hash alike, as they train alike.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return ImageFacts(
        sha256=hashlib.sha256(data).hexdigest(),
        phash=str(imagehash.phash(rgb)),
        width=image.width,
        height=image.height,
        mode=image.mode,
    )


def to_pixels(data: bytes, size: int) -> np.ndarray:
    """Raw RGB pixels, uint8, shape (size, size, 3): the model's input before float cast.

    Bilinear with antialiasing, no aspect-preserving crop — the behaviour of
    `keras.utils.image_dataset_from_directory` with its defaults.
    """
    image = open_image(data)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


THUMBNAIL_QUALITY = 85


def thumbnail(data: bytes, size: int) -> bytes:
    """A JPEG of the image whose longer side is `size` px, the aspect ratio kept (the shorter
    side rounded, at least 1 px); smaller images are enlarged, so a grid of them lines up.

    Decoded by `open_image`, so it shows the RGB pixels training and serving see (any alpha
    dropped as they drop it); that leaves nothing PNG would keep, and JPEG is the smaller.
    """
    image = open_image(data)
    width, height = image.size
    scale = size / max(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target != image.size:
        # reducing_gap: a cheap box reduction first, so a photo of megapixels shrinks quickly
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()
