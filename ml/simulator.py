"""A seeded production stream for the ``credit_default`` model, with drift at known periods.

The demo and the tests need data that behaves like a real lending book (and no downloads), with drift
that starts exactly when the scenario says so. :class:`CreditDefaultSimulator` produces it one
*period* (a simulated day by default) at a time: ``batch(p)`` returns the applications scored in
period ``p`` and their default labels, which only become known ``label_delay`` after each
application. The same ``(seed, period)`` always gives the same rows.

Data-generating process (one borrower per row; ``c`` = covariate strength of the active phase)
------------------------------------------------------------------------------------------------
Two hidden per-borrower traits tie the features together: ``wealth`` (income luck, assets) and
``stress`` (how stretched the borrower's finances are), both standard normal.

* ``age``: integer 18-80, ``18 + 62 * Beta(2.2, 3)`` (mean ~44).
* ``employment_type``: salaried / self_employed / contract / unemployed / retired, multinomial
  logit on age (the young are more often on contracts; ``retired`` only becomes likely past ~60).
* ``income``: yearly, lognormal (median ~34,000): rises with age up to ~52 then falls, lower for
  contract, unemployed (benefits) and retired (pension) workers, plus ``wealth``; rounded to 100.
* ``home_ownership``: rent / mortgage / own, logit on age and ``wealth``.
* ``open_credit_lines``: Poisson, more with age and ``wealth`` (mean ~3.5).
* ``credit_utilization``: in (0, 1), a logistic function of ``stress`` plus noise (mean ~0.36).
* ``debt_ratio``: debt / income in (0, 1.6), ``1.6 * sigmoid(...)`` of ``stress``, ``-wealth`` and
  noise (median ~0.35).
* ``late_payments_12m``: Poisson with log-rate ``-1.1 + 0.9 * stress``, capped at 12 (2/3 are 0).
* ``loan_amount``: lognormal (median ~11,000), grows with income (elasticity 0.45); rounded to 50.
* No missing values, no out-of-range values: the demo is about drift, not data-quality failures.

The label ``default`` (1 = defaults within 12 months) is Bernoulli with a logistic probability of
the standardised features: higher utilization, debt ratio, late payments and loan-to-income raise
it; income, age and owning a home lower it; unemployed > contract > self_employed > salaried >
retired; rent > mortgage > own. The base rate is ~16 % with no drift. A scikit-learn
LogisticRegression (StandardScaler + OneHotEncoder) trained on 4 quiet periods reaches a ROC AUC
of 0.75-0.85 on the next period of 800 rows (~0.81 on average over seeds).

Drift phases
------------
``phases`` is a list of :class:`DriftPhase`; from ``start_period`` on, a phase's strengths apply
(until the next phase). Strength 1 is the "standard" change below; other values scale it linearly
(0.5 = half the shift, 2 = double). Both drifts draw the same random numbers as the quiet phase, so
a drifted period holds the same borrowers, moved.

* **Covariate drift** (``covariate``): an economic downturn changes who applies. Moved at
  ``covariate=1``: ``employment_type`` shifts from salaried (60 % -> 49 %) towards contract
  (18 % -> 26 %) and unemployed (4 % -> 10 %); ``income`` falls (log -0.25, plus the employment
  mix: median ~34,000 -> ~25,000); ``credit_utilization`` rises (+0.6 on the logit scale, mean
  0.36 -> 0.47); ``debt_ratio`` rises (+0.45 on the logit scale, median 0.36 -> 0.50);
  ``loan_amount`` rises (+35 % net of the income drop, median ~11,000 -> ~15,000). Not moved (same
  distribution before and after): ``age``, ``home_ownership``, ``open_credit_lines`` and
  ``late_payments_12m`` (a 12-month history lags the shock). So 5 of 9 features drift: an
  Evidently check at default settings of 800 drifted rows against 3,200 quiet ones flags those 5
  (56 %), and none between two quiet samples. See :data:`COVARIATE_MOVED` and
  :data:`COVARIATE_UNMOVED`. Through the feature changes alone the default rate rises to ~29 %.
* **Concept drift** (``concept``): the same borrower now defaults for different reasons; a model
  fitted before the change ranks the new book clearly worse: with covariate=1 as well, a model
  trained on 4 pre-drift periods scores ~0.76 ROC AUC on a post-drift period, ~0.12 below one
  trained on just 2 post-drift periods (~0.88; the gap is >= 0.07 for every seed tried). At
  ``concept=1``: utilization and late payments matter about twice as much, income and debt ratio
  almost stop mattering, older borrowers become the riskier ones (the age effect flips), the
  ``retired`` (pensions squeezed) category flips from safe to risky and ``self_employed`` (hit by
  the downturn) becomes much riskier, while ``unemployed`` (now on support schemes) flips to
  slightly safer than salaried, and mortgage holders (squeezed by rate rises) become the riskiest
  housing group. The intercept moves so the base rate stays plausible: still ~16 % at concept=1
  alone, ~23 % with covariate=1 as well. Concept drift alone leaves the features untouched.

Timing
------
Period ``p`` covers ``[start + p * period, start + (p + 1) * period)``; ``ts`` is spread uniformly
inside it (sorted). Each label arrives exactly ``label_delay`` after its row (``labelled_at = ts +
label_delay``, no jitter), so by ``period_start(p + 1) + label_delay`` every label of period ``p``
has arrived. ``row_id`` is ``"s{seed}-p{period}-{i:05d}"``: unique across periods and stable.
Periods are numbered from 0 (``start``); bootstrap history is simply the first few periods.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

FEATURES: tuple[str, ...] = (
    "age",
    "income",
    "debt_ratio",
    "credit_utilization",
    "late_payments_12m",
    "open_credit_lines",
    "loan_amount",
    "employment_type",
    "home_ownership",
)
EMPLOYMENT_TYPES: tuple[str, ...] = ("salaried", "self_employed", "contract", "unemployed", "retired")
HOME_OWNERSHIP: tuple[str, ...] = ("rent", "mortgage", "own")
# What covariate drift moves, and what it leaves alone (for tests and for narrating the demo).
COVARIATE_MOVED: tuple[str, ...] = (
    "income",
    "debt_ratio",
    "credit_utilization",
    "loan_amount",
    "employment_type",
)
COVARIATE_UNMOVED: tuple[str, ...] = ("age", "home_ownership", "open_credit_lines", "late_payments_12m")

# --- Covariate drift at strength 1 (scaled linearly by DriftPhase.covariate). ---
_COV_LOG_INCOME = -0.25
_COV_UTIL_LOGIT = 0.6
_COV_DEBT_LOGIT = 0.45
_COV_LOG_LOAN = 0.35
# Added to the employment logits (order of EMPLOYMENT_TYPES): fewer salaried, more contract/unemployed.
_COV_EMPLOYMENT = np.array([0.0, 0.0, 0.6, 1.0, 0.0])

# --- Default model. Features are standardised with fixed constants (not per-batch statistics), so
# the same borrower gets the same risk whatever else is in the batch. ---
_BASE_COEF: dict[str, float] = {
    "income": -0.42,  # log income
    "debt_ratio": 0.35,
    "credit_utilization": 0.55,
    "late_payments_12m": 0.55,  # log1p(count)
    "age": -0.25,
    "open_credit_lines": 0.1,
    "loan_to_income": 0.25,  # log(loan / income)
}
# Concept drift at strength 1: added to the coefficients above and to the category effects below.
_CONCEPT_DELTA: dict[str, float] = {
    "income": 0.37,  # -0.42 -> -0.05: income almost stops protecting
    "debt_ratio": -0.25,  # 0.35 -> 0.1
    "credit_utilization": 0.6,  # 0.55 -> 1.15
    "late_payments_12m": 0.5,  # 0.55 -> 1.05
    "age": 0.7,  # -0.25 -> +0.45: older borrowers become the riskier ones
    "open_credit_lines": 0.0,
    "loan_to_income": -0.1,
}
_BASE_EMPLOYMENT = np.array([0.0, 0.2, 0.3, 0.7, -0.3])
# self_employed 0.2 -> 0.95, unemployed 0.7 -> -0.2, retired -0.3 -> 1.0 (salaried stays the reference).
_CONCEPT_EMPLOYMENT = np.array([0.0, 0.75, 0.0, -0.9, 1.3])
_BASE_HOME = np.array([0.2, 0.0, -0.25])
_CONCEPT_HOME = np.array([-0.2, 0.6, 0.0])  # rent 0.2 -> 0, mortgage 0 -> 0.6: rate rises bite
_BASE_INTERCEPT = -2.45  # ~16 % defaults in the quiet phase
_CONCEPT_INTERCEPT = -0.45  # keeps the base rate plausible after the concept change

_CENTRE = {
    "income": np.log(42_000.0),
    "debt_ratio": 0.4,
    "credit_utilization": 0.4,
    "late_payments_12m": 0.3,
    "age": 44.0,
    "open_credit_lines": 3.5,
    "loan_to_income": np.log(12_000.0 / 42_000.0),
}
_SCALE = {
    "income": 0.6,
    "debt_ratio": 0.25,
    "credit_utilization": 0.25,
    "late_payments_12m": 0.45,
    "age": 13.0,
    "open_credit_lines": 2.0,
    "loan_to_income": 0.6,
}


@dataclass(frozen=True)
class DriftPhase:
    """From ``start_period`` on (inclusive), the stream drifts with these strengths.

    ``covariate``: 0 = none, 1 = the standard downturn shift (module docstring lists the features).
    ``concept``: 0 = none, 1 = the standard change of the default model's coefficients.
    """

    start_period: int
    covariate: float = 0.0
    concept: float = 0.0


@dataclass(frozen=True)
class Batch:
    """One period of the stream: the scored rows, and their labels (which arrive later)."""

    period: int
    features: pd.DataFrame  # row_id, ts, then FEATURES in order
    labels: pd.DataFrame  # row_id, label, labelled_at


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pick(logits: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Category index per row by inverse CDF on one uniform draw, so shifting the logits (drift)
    reuses the same random numbers and moves only the borrowers near a boundary."""
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    return np.minimum((uniform[:, None] > cdf).sum(axis=1), logits.shape[1] - 1)


class CreditDefaultSimulator:
    """Seeded generator of the ``credit_default`` production stream (see the module docstring)."""

    def __init__(
        self,
        seed: int = 0,
        rows_per_period: int = 800,
        start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
        period: timedelta = timedelta(days=1),
        label_delay: timedelta = timedelta(days=1),
        phases: Sequence[DriftPhase] = (),
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if rows_per_period < 1:
            raise ValueError(f"rows_per_period must be >= 1, got {rows_per_period}")
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be timezone-aware (e.g. datetime(2026, 1, 1, tzinfo=UTC))")
        if period <= timedelta(0):
            raise ValueError(f"period must be positive, got {period}")
        if label_delay < timedelta(0):
            raise ValueError(f"label_delay must be >= 0, got {label_delay}")
        ordered = sorted(phases, key=lambda p: p.start_period)
        starts = [p.start_period for p in ordered]
        if len(set(starts)) != len(starts):
            raise ValueError(f"phases: two phases start at the same period ({starts})")
        if starts and starts[0] < 0:
            raise ValueError(f"phases: start_period must be >= 0, got {starts[0]}")
        self.seed = seed
        self.rows_per_period = rows_per_period
        self.start = start.astimezone(UTC)
        self.period = period
        self.label_delay = label_delay
        self.phases: tuple[DriftPhase, ...] = tuple(ordered)
        self._starts = starts

    def period_start(self, period: int) -> datetime:
        """Start of ``period`` (tz-aware UTC); the period runs until ``period_start(period + 1)``."""
        return self.start + period * self.period

    def phase_at(self, period: int) -> DriftPhase:
        """The phase in force at ``period``: the last one starting at or before it, else
        ``DriftPhase(0)`` (no drift)."""
        index = bisect.bisect_right(self._starts, period)
        return self.phases[index - 1] if index else DriftPhase(start_period=0)

    def batch(self, period: int) -> Batch:
        """The rows scored in ``period`` and their labels; the same for the same (seed, period)."""
        if period < 0:
            raise ValueError(f"period must be >= 0 (period 0 starts at {self.start}), got {period}")
        phase = self.phase_at(period)
        n = self.rows_per_period
        # One stream per (seed, period): batches can be made in any order, each is reproducible.
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, period]))
        # Every random number is drawn here, in a fixed order and independent of the phase, so a
        # drifted batch is the quiet batch with the same borrowers moved (common random numbers).
        draws = {
            "ts": rng.random(n),
            "age": rng.beta(2.2, 3.0, n),
            "wealth": rng.standard_normal(n),
            "stress": rng.standard_normal(n),
            "employment": rng.random(n),
            "income": rng.standard_normal(n),
            "self_employed": rng.standard_normal(n),
            "home": rng.random(n),
            "lines": rng.random(n),
            "util": rng.standard_normal(n),
            "debt": rng.standard_normal(n),
            "late": rng.random(n),
            "loan": rng.standard_normal(n),
            "label": rng.random(n),
        }
        features, internals = self._features(draws, phase.covariate)
        probability = self._default_probability(features, internals, phase.concept)
        label = (draws["label"] < probability).astype(np.int64)

        # Whole microseconds (what Python datetimes and SQL timestamps hold, so ts survives a round
        # trip through the store); floor keeps every ts strictly before the next period's start.
        period_us = self.period // timedelta(microseconds=1)
        offsets_us = np.sort(np.floor(draws["ts"] * period_us).astype(np.int64))
        ts = pd.Timestamp(self.period_start(period)) + pd.to_timedelta(offsets_us, unit="us")
        ts = pd.DatetimeIndex(ts).as_unit("ns")
        row_id = np.array([f"s{self.seed}-p{period}-{i:05d}" for i in range(n)], dtype=object)

        frame = pd.DataFrame({"row_id": row_id, "ts": ts})
        for name in FEATURES:
            frame[name] = features[name]
        labels = pd.DataFrame(
            {"row_id": row_id.copy(), "label": label, "labelled_at": ts + pd.Timedelta(self.label_delay)}
        )
        return Batch(period=period, features=frame, labels=labels)

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _features(
        draws: dict[str, np.ndarray], c: float
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The feature columns, plus the logs and category indices the label model works on."""
        wealth, stress = draws["wealth"], draws["stress"]
        age = np.floor(18 + 62 * draws["age"]).clip(18, 80)

        # Employment: young -> contract more often; retired only becomes likely past ~60.
        emp_logits = (
            np.column_stack(
                [
                    np.zeros_like(age),
                    -1.6 + 0.02 * (age - 40),
                    -1.2 - 0.035 * (age - 40),
                    np.full_like(age, -2.6),
                    -1.0 + 0.3 * (age - 62),
                ]
            )
            + c * _COV_EMPLOYMENT
        )
        employment = _pick(emp_logits, draws["employment"])

        # Income: hump in age (peak 52), employment level, wealth; the downturn lowers it.
        emp_income = np.array([0.0, 0.05, -0.15, -1.1, -0.35])[employment]
        log_income = (
            np.log(42_000.0)
            - 0.0007 * (age - 52) ** 2
            + emp_income
            + 0.4 * wealth
            + 0.2 * draws["income"]
            + np.where(employment == 1, 0.25 * draws["self_employed"], 0.0)  # self-employed vary more
            + c * _COV_LOG_INCOME
        )
        income = np.round(np.exp(log_income), -2).clip(1_000, None)

        # Home ownership from age and wealth only (so the downturn does not move it).
        home_logits = np.column_stack(
            [
                np.zeros_like(age),
                -1.6 + 0.06 * (age - 18) + 0.8 * wealth,
                -3.4 + 0.075 * (age - 18) + 0.5 * wealth,
            ]
        )
        home = _pick(home_logits, draws["home"])

        # Count features by inverse CDF on one uniform (again: same draws whatever the phase).
        lines_rate = np.exp(np.log(3.4) + 0.012 * (age - 44) + 0.15 * wealth)
        open_lines = _poisson_quantile(draws["lines"], lines_rate, cap=30)
        late_rate = np.exp(-1.1 + 0.9 * stress)
        late = _poisson_quantile(draws["late"], late_rate, cap=12)

        utilization = _sigmoid(-0.75 + 1.0 * stress + 0.7 * draws["util"] + c * _COV_UTIL_LOGIT)
        debt_ratio = 1.6 * _sigmoid(
            -1.25 + 0.5 * stress - 0.25 * wealth + 0.6 * draws["debt"] + c * _COV_DEBT_LOGIT
        )
        # Loans scale with income; in the downturn people borrow more: the drift term cancels the
        # income drop's pull, so loans move by +_COV_LOG_LOAN (log) in total.
        log_loan = (
            np.log(12_000.0)
            + 0.45 * (log_income - np.log(42_000.0))
            + 0.5 * draws["loan"]
            + c * (_COV_LOG_LOAN - 0.45 * _COV_LOG_INCOME)
        )
        loan_amount = np.round(np.exp(log_loan) / 50) * 50
        loan_amount = loan_amount.clip(500, None)

        features = {
            "age": age.astype(np.int64),
            "income": income.astype(np.float64),
            "debt_ratio": np.round(debt_ratio, 4),
            "credit_utilization": np.round(utilization, 4),
            "late_payments_12m": late.astype(np.int64),
            "open_credit_lines": open_lines.astype(np.int64),
            "loan_amount": loan_amount.astype(np.float64),
            "employment_type": np.array(EMPLOYMENT_TYPES, dtype=object)[employment],
            "home_ownership": np.array(HOME_OWNERSHIP, dtype=object)[home],
        }
        internals = {
            "log_income": np.log(income),
            "log_loan": np.log(loan_amount),
            "employment": employment,
            "home": home,
        }
        return features, internals

    @staticmethod
    def _default_probability(
        features: dict[str, np.ndarray], internals: dict[str, np.ndarray], k: float
    ) -> np.ndarray:
        """P(default) per row under concept strength ``k`` (logistic in standardised features)."""
        log_income, log_loan = internals["log_income"], internals["log_loan"]
        raw = {
            "income": log_income,
            "debt_ratio": features["debt_ratio"],
            "credit_utilization": features["credit_utilization"],
            "late_payments_12m": np.log1p(features["late_payments_12m"]),
            "age": features["age"].astype(np.float64),
            "open_credit_lines": features["open_credit_lines"].astype(np.float64),
            "loan_to_income": log_loan - log_income,
        }
        logit = np.full(len(log_income), _BASE_INTERCEPT + k * _CONCEPT_INTERCEPT)
        for name, value in raw.items():
            z = (value - _CENTRE[name]) / _SCALE[name]
            logit += (_BASE_COEF[name] + k * _CONCEPT_DELTA[name]) * z
        logit += (_BASE_EMPLOYMENT + k * _CONCEPT_EMPLOYMENT)[internals["employment"]]
        logit += (_BASE_HOME + k * _CONCEPT_HOME)[internals["home"]]
        return _sigmoid(logit)


def _poisson_quantile(uniform: np.ndarray, rate: np.ndarray, cap: int) -> np.ndarray:
    """Poisson(rate) by inverse CDF of ``uniform``, capped at ``cap`` (vectorised, no scipy)."""
    pmf = np.exp(-rate)
    cdf = pmf.copy()
    count = np.zeros(len(rate), dtype=np.int64)
    for k in range(1, cap + 1):
        count += uniform > cdf
        pmf = pmf * rate / k
        cdf = cdf + pmf
    return count
