"""The devices a worker trains on: which GPUs it keeps (WORKER_DEVICES, WORKER_GPUS), what
it tells TensorFlow about them, and how they are described to people.

The rules are pure functions, tested without TensorFlow; `configure_devices` is the one
place TensorFlow is told, before its runtime starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger("service.worker")


@dataclass(frozen=True)
class Device:
    """One device a worker trains on: a GPU it uses, or the CPU when it uses none."""

    kind: Literal["GPU", "CPU"]
    name: str  # TensorFlow's physical device name: /physical_device:GPU:0
    memory_bytes: int | None = None  # a GPU's own memory; for the CPU, the host's RAM
    model: str | None = None  # what the driver calls a GPU: "NVIDIA H200"


def chosen_gpus(found: int, indices: Sequence[int] | None, count: int | None) -> list[int]:
    """The indices of the GPUs a worker trains on, of the `found` TensorFlow sees:
    WORKER_DEVICES (`indices`; None: all), then at most WORKER_GPUS (`count`) of them."""
    chosen = list(range(found)) if indices is None else list(indices)
    unknown = [index for index in chosen if not 0 <= index < found]
    if unknown:
        raise ValueError(f"WORKER_DEVICES names GPU(s) {unknown}, but TensorFlow sees {found}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"WORKER_DEVICES names a GPU twice: {chosen}")
    return chosen if count is None else chosen[:count]


def claimed_gpus(count: int | None, devices: Sequence[Device]) -> int:
    """The GPUs a worker claims jobs for: WORKER_GPUS when set (an operator may say more
    than TensorFlow sees: a test simulates a GPU worker so), else the GPUs it trains on."""
    return sum(device.kind == "GPU" for device in devices) if count is None else count


def describe_devices(devices: Sequence[Device]) -> str:
    """The devices in one line for the log: `GPU /physical_device:GPU:0 (NVIDIA H200,
    140.0 GiB)`, or the CPU with the host's RAM."""

    def one(device: Device) -> str:
        facts = [device.model] if device.model else []
        if device.memory_bytes is not None:
            facts.append(f"{device.memory_bytes / 2**30:.1f} GiB")
        return f"{device.kind} {device.name}" + (f" ({', '.join(facts)})" if facts else "")

    return ", ".join(one(device) for device in devices) or "nothing"


def host_memory_bytes() -> int | None:
    """The host's RAM (POSIX); None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def configure_devices(settings: Settings) -> list[Device]:
    """The devices this worker trains on: the GPUs WORKER_DEVICES and WORKER_GPUS pick
    (the others hidden from TensorFlow, memory growth on these so several processes can
    share one), or the CPU when it keeps none. Call it before TensorFlow starts its runtime:
    a multi-GPU job mirrors its model over exactly the GPUs left visible."""
    from service.ml.runtime import import_tensorflow

    tf = import_tensorflow()

    found = tf.config.list_physical_devices("GPU")
    kept = [
        found[index]
        for index in chosen_gpus(len(found), settings.worker_devices, settings.worker_gpus)
    ]
    try:
        if kept != found:
            tf.config.set_visible_devices(kept, "GPU")
        for gpu in kept:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as error:  # the runtime has started (a worker inside another process)
        log.warning("devices left as they are: %s", error)
        kept = tf.config.get_visible_devices("GPU")
    if not kept:
        cpu = tf.config.list_physical_devices("CPU")[0].name
        return [Device("CPU", cpu, host_memory_bytes())]
    memory = _gpu_memory_bytes(len(kept))
    return [
        Device(
            "GPU",
            gpu.name,
            memory[number] if number < len(memory) else None,
            tf.config.experimental.get_device_details(gpu).get("device_name"),
        )
        for number, gpu in enumerate(kept)
    ]


def _gpu_memory_bytes(count: int) -> list[int | None]:
    """Each visible GPU's memory as TensorFlow's allocator may use it, in visible order.
    TensorFlow's public API does not say (get_memory_info counts use, not size): this asks
    the device list, which starts the runtime (after configure_devices has set it up)."""
    try:
        from tensorflow.python.client import device_lib

        local = device_lib.list_local_devices()
    except Exception:  # a private module: no memory figure rather than no worker
        log.warning("GPU memory unknown", exc_info=True)
        return [None] * count
    return [device.memory_limit for device in local if device.device_type == "GPU"]
