"""The evaluation plot logged with every candidate: champion vs challenger on the holdout, with
the confidence interval of the gain the gate used, and the champion's live metric over time."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def evaluation_figure(evaluation: dict[str, Any], history: list[tuple[datetime, float]], metric: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 1.6]})
    names = ["challenger"]
    values = [evaluation["challenger"]]
    if evaluation.get("champion") is not None:
        names.insert(0, "champion")
        values.insert(0, evaluation["champion"])
    colours = ["#7f8c8d", "#2e86de"][-len(values):]
    left.bar(names, values, color=colours)
    low = min(values) - 0.05 if evaluation["greater_is_better"] else 0
    left.set_ylim(bottom=max(0, low))
    if evaluation.get("ci_low") is not None:
        # The gate's interval is on the gain; draw it from the champion's value.
        sign = 1 if evaluation["greater_is_better"] else -1
        base = evaluation["champion"]
        left.errorbar(["challenger"], [base + sign * evaluation["improvement"]],
                      yerr=[[evaluation["improvement"] - evaluation["ci_low"]],
                            [evaluation["ci_high"] - evaluation["improvement"]]],
                      fmt="o", color="black", capsize=6, label="gain CI (paired bootstrap)")
        left.legend(loc="lower right", fontsize=8)
    for x, value in enumerate(values):
        left.annotate(f"{value:.3f}", (x, value), ha="center", va="bottom", fontsize=9)
    left.set_title(f"holdout {metric} (n={evaluation['n_rows']}): {evaluation['verdict']}", fontsize=10)

    if history:
        times, scores = zip(*sorted(history), strict=True)
        right.plot(times, scores, marker="o", color="#2e86de", label=f"live {metric} of the champion")
        right.axhline(evaluation["challenger"], color="#e67e22", linestyle="--", label="challenger on holdout")
        right.legend(fontsize=8)
        right.tick_params(axis="x", labelrotation=30, labelsize=8)
    else:
        right.text(0.5, 0.5, "no live metric yet", ha="center", va="center", transform=right.transAxes)
    right.set_title(f"{metric} over time", fontsize=10)
    fig.tight_layout()
    return fig
