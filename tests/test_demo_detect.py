"""The detection demo's account of a sweep, whichever replica claimed the detection."""

from __future__ import annotations

from authz.dev import demo_detect
from authz.dev.clinic import Answer
from authz.dev.demo_detect import THRESHOLD, Sweep

BEFORE = 13  # the clinic day's distinct patients
CROSSING = THRESHOLD - BEFORE  # the sweep's chart (0-based) that made THRESHOLD + 1


def _sweep() -> Sweep:
    sweep = Sweep()
    for i in range(20):  # answered every 10 ms; contained from chart CROSSING + 3 on
        outcome = "allowed" if i <= CROSSING + 2 else "agent_suspended"
        sweep.answers.append((i * 0.01, Answer(outcome, f"a{i}")))
    sweep.watched = [(0.14, Answer("allowed", "b0")), (0.16, Answer("agent_suspended", "b1"))]
    return sweep


def _detection(decision_id: str) -> dict[str, object]:
    return {"decision_id": decision_id, "evidence": {"count": THRESHOLD + 1}}


def test_the_crossing_named_by_the_sweeps_replica() -> None:
    measured = demo_detect._report(_sweep(), _detection(f"a{CROSSING}"), BEFORE)
    assert measured["allowed"] == CROSSING + 3
    assert measured["replica_a_ms"] == 30.0 and measured["replica_b_ms"] == 40.0


def test_a_detection_claimed_by_the_other_replicas_check_still_times_from_the_crossing() -> None:
    """Regression: replica B's own check, judged over the line a moment after the crossing,
    claimed the detection first; the demo found no crossing and printed `None ms`."""
    measured = demo_detect._report(_sweep(), _detection("b0"), BEFORE)
    assert measured["replica_a_ms"] == 30.0 and measured["replica_b_ms"] == 40.0
