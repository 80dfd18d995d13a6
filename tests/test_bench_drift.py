"""The drift-cost benchmark's smoke run (bench/drift_cost.py --smoke) still works end to end.

Checks the outputs' shape and that the contenders saw the same data and that Driftline's verdicts
match the preset's; never timings (those belong to the full benchmark, see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math

import pytest

from bench import drift_cost


def _strict_json(text: str):
    def no_constants(name: str):
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("drift_cost")
    assert drift_cost.main(["--smoke", "--out", str(out)]) == 0
    return out


def test_smoke_writes_json_and_markdown(smoke):
    assert sorted(p.name for p in smoke.iterdir()) == ["drift_cost.json", "drift_cost.md"]
    data = _strict_json((smoke / "drift_cost.json").read_text())
    assert data["benchmark"] == "drift_cost" and data["smoke"] is True
    assert data["command"] == ".venv/bin/python -m bench.drift_cost --smoke"
    assert data["machine"]["cores"] >= 1 and data["machine"]["evidently"].startswith("0.7")
    assert data["goal"] is None  # judged on full runs only
    expected = {(c, n, m) for c in drift_cost.CASES for n in drift_cost.SMOKE_SIZES for m in drift_cost.METHODS}
    assert {(r["case"], r["rows"], r["method"]) for r in data["results"]} == expected
    for row in data["results"]:
        assert row["wall_s"] > 0 and row["cpu_s"] >= 0
        assert math.isfinite(row["peak_rss_mb"]) and row["peak_rss_mb"] >= row["rss_before_mb"] > 0
        assert len(row["columns"]) == 20  # 20 numeric, or 14 numeric + 6 categorical

    md = (smoke / "drift_cost.md").read_text()
    assert md.startswith("## Drift-check cost\n")
    assert "`.venv/bin/python -m bench.drift_cost --smoke`" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| Case | Rows | Contender |")
    assert len(table) == 1 + len(expected)  # header + one row per measurement
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "Nothing is sampled" in md and "Machine:" in md


def test_smoke_contenders_saw_the_same_data_and_driftline_matches_the_preset(smoke):
    data = _strict_json((smoke / "drift_cost.json").read_text())
    for case in drift_cost.CASES:
        rows = {r["method"]: r for r in data["results"] if r["case"] == case}
        assert len({r["data_hash"] for r in rows.values()}) == 1
        preset = rows["preset"]
        for method in ("driftline", "driftline_html"):
            row = rows[method]
            assert row["agree_with_preset"] == row["n_columns"] == 20, row["disagreements"]
            assert row["same_method_threshold_score_as_preset"]
            assert row["columns"] == preset["columns"]
        # The injected drift is found (at smoke size a 100-level column may also trip on noise).
        assert set(drift_cost.DRIFT[case]) <= set(rows["driftline"]["drifted"])
        assert not {"x02", "x03", "x04"} & set(rows["driftline"]["drifted"])
        # scipy is compared too, though its verdicts need not match.
        assert 0 <= rows["scipy"]["agree_with_preset"] <= 20


def test_frames_are_seeded_and_typed():
    a = drift_cost.make_frames("mixed", 500)
    b = drift_cost.make_frames("mixed", 500)
    assert drift_cost.data_hash(a[0], a[1]) == drift_cost.data_hash(b[0], b[1])
    reference, current, kinds = a
    assert list(reference.columns) == list(current.columns) == list(kinds)
    assert sum(k == "categorical" for k in kinds.values()) == 6
    assert all(str(reference[c].dtype) == "float64" for c, k in kinds.items() if k == "numerical")
    with pytest.raises(ValueError, match="unknown case 'text'"):
        drift_cost.make_frames("text", 10)


def test_render_rewrites_the_same_markdown_from_json(smoke, tmp_path):
    copy = tmp_path / "drift_cost.json"
    copy.write_text((smoke / "drift_cost.json").read_text())
    assert drift_cost.main(["--render", str(copy)]) == 0
    assert (tmp_path / "drift_cost.md").read_text() == (smoke / "drift_cost.md").read_text()
