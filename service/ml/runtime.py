"""TensorFlow's import, paid once per process without the collector rescanning it as it grows."""

from __future__ import annotations

import gc
import sys
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """TensorFlow (and Keras), imported with the garbage collector paused. The import makes
    about 360,000 objects that live as long as the process; while they are made, every 25 %
    of growth sets off a full collection that rescans all of them. Measured here: 2.7 s for the
    import with the collector on, 2.0–2.3 s paused. The worker imports it before its first
    job, the API at its first model load.

    Then they are frozen (`gc.freeze`, after one collection for the import's 1,800 unreachable
    objects): modules live as long as the process, so no later collection needs to rescan
    them. Measured in the worker processes of a test training six jobs on three workers: each
    one's collections took 2.3-2.9 s of its 25 s before, 1.2-1.3 s after (half of that the one
    collection before the freeze), and the test 20.9-21.1 s before, 18.3-19.0 s after."""
    if "tensorflow" not in sys.modules or "keras" not in sys.modules:
        enabled = gc.isenabled()
        gc.disable()
        try:
            import keras  # noqa: F401  (Keras 3 imports TensorFlow, its backend, first)
            import tensorflow  # noqa: F401
        finally:
            if enabled:
                gc.enable()
        gc.collect()
        gc.freeze()
    return sys.modules["tensorflow"]
