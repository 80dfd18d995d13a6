"""``driftline replay`` (also ``python -m driftline.replay_cli``): its arguments, kept apart from
:mod:`ml.replay` so building the CLI's parser does not import pandas."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Replay a time-ordered CSV (or ARFF) file batch by batch through Driftline's own decisions (guard,
validation, drift, trigger, training, promotion gate) and, in the same run, the baselines: a static
model and retrain every k batches (--every; default k = 1, 2, 4, 8). Batch-prequential: each batch is
predicted by each strategy's current model, then its labels are revealed (--label-delay batches
later), then each strategy may retrain.

Prints a table (metric, retrains, promotions, rejections, failed retrains, rollbacks, and "vs
schedule": Driftline's metric against the line through the fixed schedules at its own number of
retrains, + = better). --plot writes the metric over time (PNG), --frontier-plot retrains against the
metric, --json the raw result, --decisions one CSV line per Driftline step (what it saw, why it
trained or not, the gate's verdict).

The data: one row per observation with its label. Rows are sorted by --time if they are not in order
(a note says so); without --time they are taken in file order, --row-interval apart. Features are
every other column (numerical if numeric, else categorical) unless --features or the config lists
them; a column without a header name (a saved pandas index, "Unnamed: 0") is dropped with a note.

Complete example: a YAML with the policy, then the replay (weekly batches, every result written):
  cat > policy.yaml <<'YAML'
  task: regression
  estimator: {class: sklearn.ensemble.HistGradientBoostingRegressor}
  windows: {holdout: 2d}
  triggers: {schedule: null, drift_share: null, max_relative_drop: 0.1, cooldown: 2w}
  promotion: {metric: mae, significance: 0.25}
  rollback: {auto: true, allowed_drop: 4.0}
  YAML
  driftline replay ../shared/data/bike_sharing/hour.csv --config policy.yaml \\
      --target cnt --time dteday --hour-column hr \\
      --features season,mnth,hr,holiday,weekday,workingday,weathersit,temp,atemp,hum,windspeed \\
      --period 7d --every 1,2,4,8,16 --plot bike.png --frontier-plot frontier.png \\
      --decisions decisions.csv --json bike.json
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


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers of batches, comma-separated, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"each k must be a whole number >= 1, got {text!r}")
    return ks


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
    parser.add_argument("--every", type=_ks, action="append",
                        help="baselines: retrain every k batches, e.g. 1,2,4,8 (repeatable; default 1,2,4,8); "
                             "with the static model they draw the schedule frontier")
    parser.add_argument("--every-held-out", type=_ks, action="append",
                        help="baseline: retrain every k batches on Driftline's candidate window (the newest "
                             "windows.holdout left out), to show what the holdout costs (repeatable)")
    parser.add_argument("--max-batches", type=int, help="stop after this many batches")
    parser.add_argument("--name", help="name shown in the table and plot (default: the data file's)")
    parser.add_argument("--plot", type=Path, help="write the metric-over-time plot here (PNG)")
    parser.add_argument("--json", type=Path, help="write the full result here (JSON)")
    parser.add_argument("--frontier-plot", type=Path,
                        help="write retrains against the metric here (PNG): the schedules as a line, Driftline as points")
    parser.add_argument("--decisions", type=Path,
                        help="write one CSV line per Driftline step (per variant): batch (0-based), as_of, drift "
                             "share, live metric, trigger, reasons, held back, candidate, gate verdict, action, champion")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _flat(groups: list[tuple[int, ...]] | None) -> tuple[int, ...]:
    return tuple(sorted({k for group in groups or () for k in group}))


def options_from_args(args: argparse.Namespace) -> Any:
    from ml import replay

    return replay.ReplayOptions(
        target=args.target, features=args.features, time_column=args.time_column, hour_column=args.hour_column,
        task=args.task, batch_rows=args.batch_rows, period=args.period, row_interval=args.row_interval,
        initial_batches=args.initial_batches, window=args.window, label_delay=args.label_delay,
        every=_flat(args.every) if args.every else replay.DEFAULT_EVERY, every_held_out=_flat(args.every_held_out),
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
    for note in data.notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    name = args.name or Path(args.data).stem

    def progress(b: int, total: int, strategies: list[Any]) -> None:
        if not args.quiet and (b % 10 == 0 or b == total - 1):
            counts = ", ".join(f"{s.name} {s.stats.retrains}" for s in strategies if s.stats.retrains)
            print(f"  batch {b + 1}/{total}  retrains: {counts or 'none yet'}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        # Evidently's chi-square on a category a window lacks divides by zero inside scipy; the drift
        # verdict is unaffected and a warning per batch would bury the table.
        warnings.filterwarnings("ignore", "divide by zero", RuntimeWarning, module="scipy.stats")
        result = replay.run(data, name=name, progress=progress)
    print(f"{name}: {result.rows} rows, {result.batches} batches of {result.period}, "
          f"{result.initial_batches} initial, window {result.window}, label delay {result.label_delay}; "
          f"{result.seconds:.0f} s")
    print(result.table_markdown())
    print(replay.frontier_text(result))
    if args.plot:
        print(f"plot: {replay.plot(result, args.plot)}")
    if args.frontier_plot:
        print(f"frontier plot: {replay.frontier_plot(result, args.frontier_plot)}")
    if args.decisions:
        print(f"decisions: {replay.write_decisions(result, args.decisions)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result.to_dict(), **replay.frontier_summary(result)}, indent=1, default=str))
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
