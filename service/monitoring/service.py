"""Drift as the API reports it: this process's window of a model, and its tests."""

from __future__ import annotations

from typing import Any

from service.monitoring.drift import FALSE_ALARM_RATE, TEST_EVERY, WINDOW, DriftMonitor
from service.monitoring.schemas import DriftRead, DriftTestRead
from service.problems import Conflict


def drift_report(monitor: DriftMonitor, model_id: str, evaluation: dict[str, Any]) -> DriftRead:
    """The model's drift, given its evaluation (whose `unknowns` block says what the window
    is compared with); Conflict for a model stored before models carried the unknown-input
    score (there is nothing to compare its traffic with)."""
    unknowns = evaluation.get("unknowns")
    if not unknowns:
        raise Conflict(
            f"model {model_id} was stored before models carried an unknown-input score: "
            "there is no score of its traffic to watch; train it again"
        )
    window, drifting, tests = monitor.state(model_id)
    last = tests[-1] if tests else None
    return DriftRead(
        model_id=model_id,
        window=window,
        window_size=WINDOW,
        test_every=TEST_EVERY,
        false_alarm_rate=FALSE_ALARM_RATE,
        reference_images=unknowns["images"],
        drifting=drifting,
        statistic=last.statistic if last else None,
        threshold=last.threshold if last else None,
        p_value=last.p_value if last else None,
        unknown_share=last.unknown_share if last else None,
        tests=[DriftTestRead(**vars(test)) for test in tests],
    )
