"""bench.serve's verdict line: issue 11's goal judged on one run's figures (no server here)."""

from __future__ import annotations

from bench.serve import goal_line


def _run(p99: float, failed: int, firsts: list[float | None]) -> dict:
    return {"p99": p99, "failed": failed, "swaps": [{"to_first_new": f} for f in firsts]}


def test_every_part_met():
    line = goal_line(_run(6.2, 0, [1.1, 3.9]), rate=200, rows=1)
    assert line == ("Goal, this run: p99 6.2 ms: met (< 10 ms); 0 failed: met (none); "
                    "slowest swap 3.90 s from the move: met (< 5 s).")


def test_each_part_can_fail_on_its_own():
    assert "p99 12.0 ms: not met" in goal_line(_run(12.0, 0, [1.0]), rate=200, rows=1)
    assert "3 failed: not met" in goal_line(_run(5.0, 3, [1.0]), rate=200, rows=1)
    assert "slowest swap 5.20 s from the move: not met" in goal_line(_run(5.0, 0, [1.0, 5.2]), rate=200, rows=1)
    assert "no swap answered" in goal_line(_run(5.0, 0, [1.0, None]), rate=200, rows=1)


def test_latency_is_judged_only_at_the_goals_rate_and_size():
    assert "p99 not judged" in goal_line(_run(50.0, 0, [1.0]), rate=50, rows=1)
    assert "p99 not judged" in goal_line(_run(50.0, 0, [1.0]), rate=200, rows=100)
