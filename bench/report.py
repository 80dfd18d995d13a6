"""Assemble ``docs/benchmarks.md`` from the sections the benchmarks wrote under ``bench/results/``.

Each benchmark writes its own ``<name>.md`` section next to its raw ``<name>.json``; this only puts
them in order under one header, so regenerating one benchmark never needs re-running the others.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("drift_cost", "latency", "replay", "cbpe", "ingest_memory", "serve")  # P1-P3, estimate, memory, serving
HEADER = """\
# Benchmarks

Regenerate everything with `make bench` (or one part with `.venv/bin/python -m bench.<name>`, then
`.venv/bin/python -m bench.report`). Each benchmark compares its contenders side by side in one run,
because these 2-core machines are noisy: read the ratios more than the absolute times. Raw numbers
are in `bench/results/*.json`. CI runs only the `--smoke` version of each (in `make test`) to keep
them working; none of these numbers is asserted by a test.
"""


def build(results: Path) -> str:
    parts = [HEADER]
    for name in ORDER:
        section = results / f"{name}.md"
        if section.exists():
            parts.append(section.read_text().strip() + "\n")
        else:
            parts.append(f"## {name}\n\nNot run yet: `.venv/bin/python -m bench.{name}`.\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(build(args.results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
