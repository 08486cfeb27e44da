"""SavedModels and weights as bytes: what the database stores and the API serves."""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # callers bring a built model; the API only unpacks archives, without keras
    import keras


def export_savedmodel(model: keras.Model) -> bytes:
    """`model.export()` packed as a tar.gz; its `serve` takes raw pixels, gives probabilities."""
    with tempfile.TemporaryDirectory(prefix="savedmodel-") as scratch:
        directory = Path(scratch) / "savedmodel"
        model.export(str(directory), format="tf_saved_model", verbose=False)
        return pack_directory(directory)


def pack_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for path in sorted(directory.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


def unpack_archive(blob: bytes, directory: Path) -> None:
    """Unpack a tar.gz this service made; members are checked to stay inside `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as archive:
        archive.extractall(directory, filter="data")


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def weights_bytes(model: keras.Model) -> bytes:
    """The model's weights as a Keras `.weights.h5` file."""
    with tempfile.TemporaryDirectory(prefix="weights-") as scratch:
        path = Path(scratch) / "backbone.weights.h5"
        model.save_weights(str(path))
        return path.read_bytes()
