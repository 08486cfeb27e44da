"""TensorFlow's import, paid once per process without the collector rescanning it as it grows."""

from __future__ import annotations

import gc
import sys
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """TensorFlow (and Keras), imported with the garbage collector paused. The import makes
    about 350,000 objects that live as long as the process; while they are made, every 25 %
    of growth sets off a full collection that rescans all of them. Measured here: 2.7 s for the
    import with the collector on, 2.0–2.3 s paused. The next full collection scans them once.
    The worker imports it before its first job, the API at its first model load."""
    if "tensorflow" not in sys.modules or "keras" not in sys.modules:
        enabled = gc.isenabled()
        gc.disable()
        try:
            import keras  # noqa: F401  (Keras 3 imports TensorFlow, its backend, first)
            import tensorflow  # noqa: F401
        finally:
            if enabled:
                gc.enable()
    return sys.modules["tensorflow"]
