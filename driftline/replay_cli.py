"""``driftline replay`` (also ``python -m driftline.replay_cli``): its arguments, kept apart from
:mod:`ml.replay` so building the CLI's parser does not import pandas."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Replay a time-ordered CSV (or ARFF) file batch by batch through Driftline's own decisions (guard,
validation, drift, trigger, training, promotion gate) and, in the same run, the baselines: a static
model, retrain every batch, retrain every k batches. Batch-prequential: each batch is predicted by
each strategy's current model, then its labels are revealed (--label-delay batches later), then each
strategy may retrain. Prints a table (metric, retrains, promotions, rejections, rollbacks); --plot
writes a PNG of the metric over time, --json the raw result.

Example (Bike Sharing, weekly batches):
  driftline replay ../shared/data/bike_sharing/hour.csv --config bench/configs/bike.yaml \\
      --target cnt --time dteday --hour-column hr --period 7d --plot bike.png
"""


def _duration(text: str) -> timedelta:
    from ml.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one column name, comma-separated")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="CSV or ARFF file, one row per observation with its label")
    parser.add_argument("--config", required=True,
                        help="Driftline model YAML: estimator, triggers, promotion, rollback (features and target "
                             "may be omitted: the arguments below give them)")
    parser.add_argument("--target", required=True, help="label column")
    parser.add_argument("--features", type=_names, help="comma-separated feature columns (default: the config's, "
                                                         "else every column but target and time)")
    parser.add_argument("--time", dest="time_column",
                        help="time column (date-times), or a numeric order column (default: file order)")
    parser.add_argument("--hour-column", help="hours to add to the time column (e.g. Bike Sharing's 'hr')")
    parser.add_argument("--task", choices=("classification", "regression"), help="default: the config's")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--batch-rows", type=int, help="rows per batch")
    size.add_argument("--period", type=_duration, help="time per batch, e.g. 7d")
    parser.add_argument("--row-interval", type=_duration, default=timedelta(hours=1),
                        help="without --time: time between rows, so policy durations mean something (default 1h)")
    parser.add_argument("--initial-batches", type=int, default=4, help="batches that train the first model (4)")
    parser.add_argument("--window", type=int, default=4, help="training window in batches (4)")
    parser.add_argument("--label-delay", type=int, default=0,
                        help="labels of batch b are revealed after batch b+N is predicted (0)")
    parser.add_argument("--every", type=int, action="append",
                        help="baseline: retrain every k batches (repeatable; default 1 and 4)")
    parser.add_argument("--every-held-out", type=int, action="append",
                        help="baseline: retrain every k batches on Driftline's candidate window (the newest "
                             "windows.holdout left out), to show what the holdout costs (repeatable)")
    parser.add_argument("--max-batches", type=int, help="stop after this many batches")
    parser.add_argument("--name", help="name shown in the table and plot (default: the data file's)")
    parser.add_argument("--plot", type=Path, help="write the metric-over-time plot here (PNG)")
    parser.add_argument("--json", type=Path, help="write the full result here (JSON)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def options_from_args(args: argparse.Namespace) -> Any:
    from ml.replay import ReplayOptions

    return ReplayOptions(
        target=args.target, features=args.features, time_column=args.time_column, hour_column=args.hour_column,
        task=args.task, batch_rows=args.batch_rows, period=args.period, row_interval=args.row_interval,
        initial_batches=args.initial_batches, window=args.window, label_delay=args.label_delay,
        every=tuple(args.every) if args.every else (1, 4), every_held_out=tuple(args.every_held_out or ()),
        max_batches=args.max_batches,
    )


def run_from_args(args: argparse.Namespace) -> int:
    import yaml

    from ml import replay

    options = options_from_args(args)
    options.check()
    try:
        raw = yaml.safe_load(Path(args.config).read_text())
    except OSError as exc:
        raise replay.ReplayError(f"config: cannot read {args.config}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise replay.ReplayError(f"config: {args.config} is not valid YAML: {exc}") from None
    frame = replay.read_table(args.data)
    data = replay.prepare(frame, options, raw, source=str(args.config))
    name = args.name or Path(args.data).stem

    def progress(b: int, total: int, strategies: list[Any]) -> None:
        if not args.quiet and (b % 10 == 0 or b == total - 1):
            counts = ", ".join(f"{s.name} {s.stats.retrains}" for s in strategies if s.stats.retrains)
            print(f"  batch {b + 1}/{total}  retrains: {counts or 'none yet'}", file=sys.stderr, flush=True)

    result = replay.run(data, name=name, progress=progress)
    print(f"{name}: {result.rows} rows, {result.batches} batches of {result.period}, "
          f"{result.initial_batches} initial, window {result.window}, label delay {result.label_delay}; "
          f"{result.seconds:.0f} s")
    print(result.table_markdown())
    if args.plot:
        print(f"plot: {replay.plot(result, args.plot)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=1, default=str))
        print(f"json: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ml.replay import ReplayError

    parser = argparse.ArgumentParser(prog="driftline replay", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except ReplayError as exc:
        print(f"replay: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
