"""The ingest-memory benchmark's smoke size (bench/ingest_memory.py --rows 20000) still runs end to end
and reports a peak; the number itself is judged on the full run (bench/results/ingest_memory.md)."""

from __future__ import annotations

import re

from bench import ingest_memory


def test_smoke_run_reports_peak_rss(tmp_path, capsys):
    assert ingest_memory.main(["--rows", "20000", "--chunk-rows", "5000", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    match = re.search(r"ingest of 20,000 rows: peak RSS ([0-9.]+) MB, [0-9.]+ s, 20,000 rows stored", printed)
    assert match, printed
    assert 10 < float(match.group(1)) < 4096
    # Then the score step over the same rows, with a champion promoted before them all.
    scored = re.search(r"scoring: 20,000 rows, peak RSS ([0-9.]+) MB", printed)
    assert scored, printed
    md = (tmp_path / "ingest_memory.md").read_text()
    assert md.startswith("## Ingest and scoring memory\n")
    assert "| 20,000 | 50,000 |" in md  # rows scored, page size
    row = next(line for line in md.splitlines() if line.startswith("| 20,000 | 5,000 |"))
    assert row.count("|") == 7 and row.endswith("| 20,000 |")
