"""The label-free estimate benchmark's smoke run (bench/cbpe.py --smoke) still works end to end;
its numbers belong to the full run (docs/benchmarks.md), none is asserted beyond being an error."""

from __future__ import annotations

import json

from bench import cbpe


def test_bench_cbpe_smoke(tmp_path):
    assert cbpe.main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "cbpe.json").read_text())
    assert data["benchmark"] == "cbpe" and data["smoke"] is True
    (sim,) = data["datasets"]
    assert set(sim["schedules"]) == {"static", "every 4"}
    for result in sim["schedules"].values():
        for metric in cbpe.METRICS:
            mae = result["mae"][metric]
            assert mae["batches"] > 0
            assert all(0 <= mae[guess] <= 1 for guess in cbpe.GUESSES)
        batch = result["per_batch"][-1]
        assert batch["calibration_rows"] >= cbpe.MIN_CALIBRATION_ROWS
    md = (tmp_path / "cbpe.md").read_text()
    assert md.startswith("## Label-free performance estimate (CBPE)")
    assert "| model | metric | batches | CBPE | at promotion | last labelled |" in md
