"""ml.drift against real Evidently (no mocks), on seeded synthetic data.

The Evidently runs are shared through module-scoped fixtures: importing Evidently alone takes
several seconds, each report well under one.
"""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pandas as pd
import pytest

from ml.config import FeatureSpec
from ml.drift import DriftInputError, DriftResult, FeatureDrift, compute_drift

N = 2000
NUMERIC = [f"x{i}" for i in range(5)]
FEATURES = [FeatureSpec(name=c, kind="numerical") for c in NUMERIC] + [
    FeatureSpec(name="c0", kind="categorical"),
    # Integers 0..9: numeric-looking, but declared categorical.
    FeatureSpec(name="c1", kind="categorical"),
]


def make_frame(rng: np.random.Generator, n: int, *, shift: bool = False) -> pd.DataFrame:
    data = {c: rng.normal(1.0 if shift and c in ("x0", "x1") else 0.0, 1.0, n) for c in NUMERIC}
    data["c0"] = rng.choice(["a", "b", "c"], n, p=[0.2, 0.3, 0.5] if shift else [0.5, 0.3, 0.2])
    data["c1"] = rng.integers(0, 10, n)
    data["score"] = rng.random(n)
    return pd.DataFrame(data)


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(42)
    return {
        "reference": make_frame(rng, N),
        "same": make_frame(rng, N),
        "shifted": make_frame(rng, N, shift=True),
    }


@pytest.fixture(scope="module")
def no_drift(frames) -> DriftResult:
    return compute_drift(frames["reference"], frames["same"], FEATURES, prediction_column="score")


@pytest.fixture(scope="module")
def shifted(frames) -> DriftResult:
    # "prediction" is in neither frame: prediction drift must be None, not an error.
    return compute_drift(frames["reference"], frames["shifted"], FEATURES, prediction_column="prediction")


def evidently_drifted_columns(reference: pd.DataFrame, current: pd.DataFrame, num_method: str) -> dict:
    """Evidently's own per-column verdict through a different metric (DriftedColumnsCount)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount

    columns = list(reference.columns)
    definition = DataDefinition(numerical_columns=columns)
    report = Report([DriftedColumnsCount(columns=[c], num_method=num_method) for c in columns])
    snapshot = report.run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    return {m["config"]["columns"][0]: m["value"]["count"] == 1 for m in snapshot.dict()["metrics"]}


# --- drift detection -------------------------------------------------------------------------


def test_same_distribution_shows_no_drift(no_drift):
    assert len(no_drift.features) == len(FEATURES)
    assert [f.name for f in no_drift.features] == [f.name for f in FEATURES]
    assert len(no_drift.drifted_features) <= 1
    assert no_drift.drift_share <= 1 / len(FEATURES)
    assert (no_drift.n_reference, no_drift.n_current) == (N, N)
    # Above 1,000 reference rows Evidently defaults to Wasserstein / Jensen-Shannon.
    assert {f.method for f in no_drift.features if f.kind == "numerical"} == {"wasserstein"}


def test_injected_shift_flags_exactly_those_columns(shifted):
    assert set(shifted.drifted_features) == {"x0", "x1", "c0"}
    assert shifted.drift_share == pytest.approx(3 / len(FEATURES))
    assert shifted["x0"].score >= shifted["x0"].threshold
    assert not shifted["x2"].drifted


def test_numeric_looking_categorical_is_treated_as_categorical(shifted):
    c1 = shifted["c1"]
    assert c1.kind == "categorical"
    # A numerical column of 10 distinct values would get "wasserstein" here.
    assert c1.method == "jensenshannon"
    assert c1.threshold == pytest.approx(0.1)


def test_per_feature_override_and_dataset_method(frames):
    features = [
        FeatureSpec(name="x0", kind="numerical", drift_method="psi", drift_threshold=0.1),
        FeatureSpec(name="x1", kind="numerical", drift_threshold=0.3),  # threshold only
        FeatureSpec(name="x2", kind="numerical"),  # dataset-wide method
        FeatureSpec(name="c0", kind="categorical", drift_method="psi", drift_threshold=0.15),
    ]
    current = frames["shifted"].copy()
    current["score"] = np.nan  # an all-null prediction column is skipped, not an error
    result = compute_drift(frames["reference"], current, features, num_method="ks", prediction_column="score")
    x0, x1, x2, c0 = result.features
    assert (x0.method, x0.threshold) == ("psi", 0.1)
    assert x0.drifted and x0.score >= 0.1
    assert (x1.method, x1.threshold) == ("ks", 0.3)
    assert (x2.method, x2.threshold) == ("ks", 0.05)
    assert (c0.method, c0.threshold) == ("psi", 0.15)
    assert result.prediction is None


def test_p_value_method_direction_matches_evidently():
    # Small samples, growing shifts: some columns drift under KS, some do not.
    rng = np.random.default_rng(7)
    shifts = {"a": 0.0, "b": 0.2, "c": 0.5, "d": 1.0, "e": 0.0}
    reference = pd.DataFrame({c: rng.normal(0, 1, 60) for c in shifts})
    current = pd.DataFrame({c: rng.normal(s, 1, 60) for c, s in shifts.items()})
    features = [FeatureSpec(name=c, kind="numerical") for c in shifts]

    result = compute_drift(reference, current, features, num_method="ks")
    verdicts = {f.name: f.drifted for f in result.features}
    assert any(verdicts.values()) and not all(verdicts.values())
    for f in result.features:
        assert (f.method, f.threshold) == ("ks", 0.05)
        assert f.drifted == (f.score < f.threshold), f  # p-value: drift when small
    assert verdicts == evidently_drifted_columns(reference, current, "ks")

    # Below 1,000 reference rows Evidently's default for numerical columns is KS too.
    auto = compute_drift(reference, current, features)
    assert [f.method for f in auto.features] == ["ks"] * len(features)
    assert auto.to_dict()["features"] == result.to_dict()["features"]


def test_distance_method_direction_matches_evidently():
    rng = np.random.default_rng(11)
    shifts = {"a": 0.0, "b": 0.1, "c": 0.4, "d": 1.0}
    reference = pd.DataFrame({c: rng.normal(0, 1, 500) for c in shifts})
    current = pd.DataFrame({c: rng.normal(s, 1, 500) for c, s in shifts.items()})
    features = [FeatureSpec(name=c, kind="numerical") for c in shifts]

    result = compute_drift(reference, current, features, num_method="psi")
    verdicts = {f.name: f.drifted for f in result.features}
    assert verdicts["d"] and not verdicts["a"]
    for f in result.features:
        assert (f.method, f.threshold) == ("psi", 0.1)
        assert f.drifted == (f.score >= f.threshold), f  # distance: drift when large
    assert verdicts == evidently_drifted_columns(reference, current, "psi")


def test_prediction_drift_when_column_present(no_drift, shifted):
    pred = no_drift.prediction
    assert pred is not None
    assert (pred.name, pred.kind) == ("score", "numerical")
    assert not pred.drifted
    # The prediction is reported on its own, not counted among the features.
    assert "score" not in [f.name for f in no_drift.features]
    assert shifted.prediction is None


def test_categorical_prediction(frames):
    reference = frames["reference"].assign(prediction=lambda d: (d["x0"] > 0).astype(int))
    current = frames["shifted"].assign(prediction=lambda d: (d["x0"] > 0).astype(int))
    result = compute_drift(
        reference, current, FEATURES[:1], prediction_column="prediction", prediction_kind="categorical"
    )
    assert result.prediction is not None
    assert result.prediction.kind == "categorical"
    assert result.prediction.method == "jensenshannon"
    assert result.prediction.drifted  # x0 moved by 1 sd, so did x0 > 0
    assert "prediction 'prediction' drifted" in result.summary()


# --- result object ---------------------------------------------------------------------------


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


@pytest.mark.parametrize("name", ["no_drift", "shifted"])
def test_to_dict_round_trip(name, request):
    result = request.getfixturevalue(name)
    data = result.to_dict()
    assert _plain(data)
    text = json.dumps(data, allow_nan=False)
    assert len(text) < 4000  # goes into an XCom
    assert DriftResult.from_dict(json.loads(text)) == result
    assert DriftResult.from_dict(data) == result


def test_summary_text(shifted):
    line = shifted.summary()
    assert "\n" not in line
    assert line.startswith(f"drift share {3 / 7:.2f} on 3/7 features: ")
    assert set(line.split(": ", 1)[1].split(", ")) == {"x0", "x1", "c0"}

    quiet = DriftResult(
        features=tuple(FeatureDrift(n, "numerical", "wasserstein", 0.1, 0.01, False) for n in "abcdefghi"),
        drift_share=0.0,
        n_reference=10,
        n_current=10,
    )
    assert quiet.summary() == "no drift (0/9 features)"
    assert quiet.drifted_features == []


def test_drifted_features_order_and_summary_truncation():
    features = (
        FeatureDrift("p_small", "numerical", "ks", 0.05, 0.049, True),  # just past
        FeatureDrift("quiet", "numerical", "ks", 0.05, 0.5, False),
        FeatureDrift("d_big", "numerical", "wasserstein", 0.1, 2.0, True),  # 20x past
        FeatureDrift("p_tiny", "numerical", "ks", 0.05, 1e-12, True),  # far past
        FeatureDrift("d_small", "categorical", "jensenshannon", 0.1, 0.12, True),
        FeatureDrift("p_zero", "categorical", "chisquare", 0.05, 0.0, True),
        FeatureDrift("d_mid", "numerical", "psi", 0.1, 0.5, True),
    )
    result = DriftResult(features=features, drift_share=6 / 7, n_reference=5, n_current=5)
    assert result.drifted_features == ["p_zero", "p_tiny", "d_big", "d_mid", "d_small", "p_small"]
    assert result.summary() == "drift share 0.86 on 6/7 features: p_zero, p_tiny, d_big, d_mid, d_small, …"
    assert DriftResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


# --- HTML report -----------------------------------------------------------------------------


def test_report_written_only_when_asked(frames, tmp_path, monkeypatch):
    reference, current = frames["reference"].head(300), frames["shifted"].head(300)
    features = FEATURES[:2]

    monkeypatch.chdir(tmp_path)
    result = compute_drift(reference, current, features)
    assert result.report_path is None
    assert list(tmp_path.iterdir()) == []

    path = tmp_path / "reports" / "nested" / "drift.html"
    result = compute_drift(reference, current, features, report_path=path)
    assert result.report_path == str(path)
    assert path.stat().st_size > 0
    assert "<html" in path.read_text(encoding="utf-8").lower()


# --- input errors ----------------------------------------------------------------------------


@pytest.fixture()
def small():
    rng = np.random.default_rng(3)
    return make_frame(rng, 50), make_frame(rng, 50)


def test_empty_frames(small):
    reference, current = small
    with pytest.raises(DriftInputError, match=r"reference data is empty"):
        compute_drift(reference.iloc[:0], current, FEATURES)
    with pytest.raises(DriftInputError, match=r"current data is empty"):
        compute_drift(reference, current.iloc[:0], FEATURES)


def test_missing_columns(small):
    reference, current = small
    with pytest.raises(DriftInputError, match=r"\['x3'\] missing from reference data"):
        compute_drift(reference.drop(columns="x3"), current, FEATURES)
    with pytest.raises(DriftInputError, match=r"\['c0'\] missing from current data"):
        compute_drift(reference, current.drop(columns="c0"), FEATURES)


def test_all_null_columns(small):
    reference, current = small
    with pytest.raises(DriftInputError, match=r"column 'x1' is entirely null in reference data"):
        compute_drift(reference.assign(x1=np.nan), current, FEATURES)
    with pytest.raises(DriftInputError, match=r"column 'c0' is entirely null in current data"):
        compute_drift(reference, current.assign(c0=None), FEATURES)
    # Evidently drops ±inf as well, so a column of only inf has nothing to compare.
    with pytest.raises(DriftInputError, match=r"column 'x2' is entirely null in current data"):
        compute_drift(reference, current.assign(x2=math.inf), FEATURES)


def test_bad_methods_and_types(small):
    reference, current = small
    with pytest.raises(DriftInputError, match=r"column 'x0': unknown drift method 'emd'"):
        compute_drift(reference, current, FEATURES, num_method="emd")
    with pytest.raises(
        DriftInputError, match=r"column 'c0': drift method 'ks' does not apply to categorical"
    ):
        compute_drift(reference, current, FEATURES, cat_method="ks")
    with pytest.raises(DriftInputError, match=r"column 'x0' is declared numerical but has dtype"):
        compute_drift(reference.assign(x0="high"), current, FEATURES)
    with pytest.raises(DriftInputError, match=r"no features"):
        compute_drift(reference, current, [])


# --- direct stat tests (no HTML) vs the ValueDrift report (HTML kept) ------------------------
#
# Without a report path compute_drift calls Evidently's stat tests directly; with one it runs a
# Report and reads the verdicts back. Both must give the same method, threshold, score and verdict
# for every column: the report is the reference here, compared field by field, exactly.


def _mixed_frame(rng: np.random.Generator, n: int, *, shift: bool) -> pd.DataFrame:
    s = 1.0 if shift else 0.0
    data = {
        "normal": rng.normal(0.6 * s, 1.0, n),
        "normal_quiet": rng.normal(0.0, 1.0, n),
        "wide": rng.normal(0.0, 1.0 + s, n),
        "lognormal": rng.lognormal(0.3 * s, 0.8, n),
        "counts": rng.poisson(3.0 + s, n).astype(float),  # more than 5 distinct values
        "three_values": rng.choice([0.0, 1.0, 2.0], n, p=[0.2, 0.3, 0.5] if shift else [0.5, 0.3, 0.2]),
        "binary_num": rng.integers(0, 2, n).astype(float),
        "colour": rng.choice(["red", "green", "blue", "grey"], n, p=[0.1, 0.2, 0.3, 0.4] if shift else None),
        "flag": rng.choice(["yes", "no"], n),
        "code": rng.integers(0, 12, n),  # numeric-looking categorical with many levels
        "score": rng.random(n) + 0.2 * s,
    }
    frame = pd.DataFrame(data)
    # Gaps and infinities: Evidently drops both before testing, on either path.
    frame.loc[frame.index[::37], "normal"] = np.nan
    frame.loc[frame.index[5::53], "lognormal"] = np.inf
    frame.loc[frame.index[3::41], "colour"] = None
    return frame


MIXED_FEATURES = [
    *(FeatureSpec(name=c, kind="numerical") for c in
      ("normal", "normal_quiet", "wide", "lognormal", "counts", "three_values", "binary_num")),
    FeatureSpec(name="colour", kind="categorical"),
    FeatureSpec(name="flag", kind="categorical"),
    FeatureSpec(name="code", kind="categorical"),
]


def _both_paths(reference, current, features, tmp_path, **kwargs) -> tuple[DriftResult, DriftResult]:
    # empirical_mmd permutes with NumPy's global generator, unseeded, so Evidently's own score
    # varies from run to run; the same seed before each path makes the two runs comparable.
    np.random.seed(0)
    direct = compute_drift(reference, current, features, **kwargs)
    path = tmp_path / "drift.html"
    np.random.seed(0)
    via_report = compute_drift(reference, current, features, report_path=path, **kwargs)
    assert direct.report_path is None and via_report.report_path == str(path) and path.exists()
    return direct, via_report


def _assert_same(direct: DriftResult, via_report: DriftResult) -> None:
    # FeatureDrift equality compares name, kind, method, threshold, score and verdict exactly.
    assert direct.features == via_report.features
    assert direct.prediction == via_report.prediction
    assert direct.drift_share == via_report.drift_share


@pytest.mark.parametrize(
    ("seed", "n"),
    [(1, 300), (2, 1000), (3, 1001), (4, 3000)],  # both sides of Evidently's 1,000-row switch
)
def test_direct_and_report_paths_agree_on_defaults(seed, n, tmp_path):
    rng = np.random.default_rng(seed)
    reference, current = _mixed_frame(rng, n, shift=False), _mixed_frame(rng, n, shift=True)
    direct, via_report = _both_paths(reference, current, MIXED_FEATURES, tmp_path, prediction_column="score")
    _assert_same(direct, via_report)
    assert direct.prediction is not None
    methods = {f.name: f.method for f in direct.features}
    # Evidently counts reference rows after dropping NaN/inf: at 1,001 rows "normal" (every 37th
    # value missing) is still a small sample, "normal_quiet" is not.
    large = n > 1000
    assert methods["normal"] == ("wasserstein" if n > 1100 else "ks")
    assert methods["normal_quiet"] == ("wasserstein" if large else "ks")
    assert methods["colour"] == ("jensenshannon" if n > 1100 else "chisquare")
    assert methods["three_values"] == ("jensenshannon" if large else "chisquare")
    assert methods["binary_num"] == methods["flag"] == ("jensenshannon" if large else "z")
    assert methods["code"] == ("jensenshannon" if large else "chisquare")
    # The injected shifts are found, and the quiet columns pass, so both verdicts are exercised.
    assert direct["normal"].drifted and direct["wide"].drifted and direct["colour"].drifted
    assert not direct["normal_quiet"].drifted and not direct["flag"].drifted


def test_direct_and_report_paths_agree_on_chosen_methods(tmp_path):
    rng = np.random.default_rng(5)
    reference, current = _mixed_frame(rng, 1500, shift=False), _mixed_frame(rng, 1500, shift=True)
    features = [
        FeatureSpec(name="normal", kind="numerical", drift_method="psi", drift_threshold=0.2),
        FeatureSpec(name="normal_quiet", kind="numerical", drift_method="anderson"),
        FeatureSpec(name="wide", kind="numerical", drift_method="cramer_von_mises"),
        FeatureSpec(name="lognormal", kind="numerical", drift_method="mannw", drift_threshold=0.01),
        FeatureSpec(name="counts", kind="numerical", drift_method="hellinger"),
        FeatureSpec(name="three_values", kind="numerical", drift_method="kl_div"),
        FeatureSpec(name="binary_num", kind="numerical", drift_threshold=0.5),  # threshold only
        FeatureSpec(name="colour", kind="categorical", drift_method="g_test"),
        FeatureSpec(name="flag", kind="categorical", drift_method="fisher_exact"),
        FeatureSpec(name="code", kind="categorical"),  # dataset-wide cat_method
    ]
    direct, via_report = _both_paths(
        reference, current, features, tmp_path, num_method="ed", cat_method="chisquare",
        prediction_column="score", prediction_kind="numerical",
    )
    _assert_same(direct, via_report)
    methods = [(f.method, f.threshold) for f in direct.features]
    assert methods == [
        ("psi", 0.2), ("anderson", 0.1), ("cramer_von_mises", 0.1), ("mannw", 0.01), ("hellinger", 0.1),
        ("kl_div", 0.1), ("ed", 0.5), ("g_test", 0.1), ("fisher_exact", 0.1), ("chisquare", 0.05),
    ]
    assert (direct.prediction.method, direct.prediction.threshold) == ("ed", 0.1)
    assert 0 < sum(f.drifted for f in direct.features) < len(features)


@pytest.mark.parametrize("num_method", ["ks", "t_test", "es", "wasserstein", "jensenshannon", "empirical_mmd"])
def test_direct_and_report_paths_agree_per_numeric_method(num_method, tmp_path):
    rng = np.random.default_rng(sum(map(ord, num_method)))
    shifts = {"a": 0.0, "b": 0.05, "c": 0.15, "d": 0.5}
    reference = pd.DataFrame({c: rng.normal(0, 1, 250) for c in shifts})
    current = pd.DataFrame({c: rng.normal(s, 1, 250) for c, s in shifts.items()})
    features = [FeatureSpec(name=c, kind="numerical") for c in shifts]
    direct, via_report = _both_paths(reference, current, features, tmp_path, num_method=num_method)
    _assert_same(direct, via_report)
    assert {f.method for f in direct.features} == {num_method}
    assert direct["d"].drifted


def test_direct_and_report_paths_agree_on_categorical_methods(tmp_path):
    # TVD is a 100-round permutation test in pure Python: small samples keep it quick.
    rng = np.random.default_rng(8)
    reference, current = _mixed_frame(rng, 200, shift=False), _mixed_frame(rng, 200, shift=True)
    features = [
        FeatureSpec(name="colour", kind="categorical"),
        FeatureSpec(name="flag", kind="categorical", drift_method="psi"),
        FeatureSpec(name="code", kind="categorical", drift_method="jensenshannon", drift_threshold=0.05),
    ]
    direct, via_report = _both_paths(reference, current, features, tmp_path, cat_method="TVD")
    _assert_same(direct, via_report)
    assert [(f.method, f.threshold) for f in direct.features] == [
        ("TVD", 0.1), ("psi", 0.1), ("jensenshannon", 0.05)
    ]
    assert direct["colour"].drifted


def test_direct_and_report_paths_agree_on_categorical_prediction(frames, tmp_path):
    reference = frames["reference"].assign(prediction=lambda d: (d["x0"] > 0).astype(int))
    current = frames["shifted"].assign(prediction=lambda d: (d["x0"] > 0).astype(int))
    direct, via_report = _both_paths(
        reference, current, FEATURES, tmp_path, prediction_column="prediction", prediction_kind="categorical"
    )
    _assert_same(direct, via_report)
    assert direct.prediction.drifted


def test_method_chooser_prefix_takes_evidentlys_branch():
    """compute_drift lets Evidently choose the default method on 1,001-row prefixes when those
    already hold more than 5 distinct values; the choice must equal Evidently's on the full data,
    including data whose prefix looks different from the rest."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    from ml.drift import _default_stattest

    rng = np.random.default_rng(9)
    cases = []
    for n in (50, 999, 1000, 1001, 1002, 2500):
        for distinct in (1, 2, 3, 5, 6, 40):
            values = rng.integers(0, distinct, 2 * n).astype(float)
            cases.append((values[:n], values[n:]))
        # Constant at first, varied later: the prefix cannot tell, so the full data decides.
        late = np.concatenate([np.zeros(min(n, 1200)), rng.normal(size=max(0, n - 1200))])[:n]
        cases.append((late, np.zeros(n)))
        cases.append((rng.normal(size=n), rng.normal(size=n)))
    for ref_values, cur_values in cases:
        for column_type, convert in ((ColumnType.Numerical, float), (ColumnType.Categorical, str)):
            reference = pd.Series(ref_values).map(convert)
            current = pd.Series(cur_values).map(convert)
            expected = get_stattest(reference, current, column_type, None)
            assert _default_stattest(reference, current, column_type) == expected, (
                len(reference), reference.nunique(), column_type
            )


@pytest.mark.parametrize(
    "series",
    [
        pd.Series([0.5, np.nan, 2.0, 3.0]),
        pd.Series([0.5, np.inf, -np.inf, np.nan]),
        pd.Series([1, 2, 3], dtype="int64"),
        pd.Series([1, 2, 3], dtype="uint8"),
        pd.Series(["a", None, "b", np.nan]),
        pd.Series(["a", "b", np.inf]),  # a string column with a float inf in it
        pd.Series([1, 2, 3], dtype=object),  # the replace turns these into int64
        pd.Series([1.5, np.inf, "x"], dtype=object),
        pd.Series([True, False, True]),
        pd.Series(["a", "b", None], dtype="category"),
        pd.Series([1, None, 3], dtype="Int64"),
        pd.Series([1.5, None, np.inf], dtype="Float64"),
        pd.Series(["a", None, "c"], dtype="string"),
    ],
    ids=lambda s: str(s.dtype) + ":" + ",".join(map(str, s.tolist())),
)
def test_drop_missing_matches_evidentlys_cleaning(series):
    """The direct path skips Evidently's replace(+-inf) where it cannot match; the result must be
    what Evidently's own cleaning in get_one_column_drift gives: same values, dtype and index."""
    from ml.drift import _drop_missing

    expected = series.replace([-np.inf, np.inf], np.nan).dropna()
    pd.testing.assert_series_equal(_drop_missing(series), expected)


# --- report title and verdict ----------------------------------------------------------------


def _result(drifted: list[bool]) -> DriftResult:
    features = tuple(
        FeatureDrift(name=f"f{i}", kind="numerical", method="ks", threshold=0.05, score=0.001 if d else 0.5, drifted=d)
        for i, d in enumerate(drifted)
    )
    return DriftResult(features=features, drift_share=sum(drifted) / len(drifted), n_reference=10, n_current=10)


def test_verdict_line():
    three_of_eight = _result([True] * 3 + [False] * 5)
    assert three_of_eight.verdict(0.3) == "Drift: 3 of 8 features drifted (share 0.38 >= threshold 0.30)"
    assert three_of_eight.verdict(0.5) == "No drift: 3 of 8 features drifted (share 0.38 < threshold 0.50)"
    assert three_of_eight.verdict(0.375).startswith("Drift: ")  # equal to the threshold counts, as in the trigger
    assert three_of_eight.verdict() == "Drift: 3 of 8 features drifted (share 0.38)"
    assert _result([False] * 4).verdict() == "No drift: 0 of 4 features drifted"
    assert _result([True]).verdict(0.3) == "Drift: 1 of 1 feature drifted (share 1.00 >= threshold 0.30)"


def _header(page: str) -> str:
    start = page.index('<header id="driftline-header"')
    return page[start:page.index("</header>", start)]


def test_report_has_title_and_verdict_at_the_top(frames, tmp_path):
    reference, current = frames["reference"].head(400), frames["shifted"].head(400)
    path = tmp_path / "drift.html"
    title = "credit_default: drift as of 2026-01-06 23:59 UTC"
    result = compute_drift(reference, current, FEATURES, report_path=path, title=title,
                           drift_share_threshold=0.3, prediction_column="score")
    page = path.read_text(encoding="utf-8")

    assert f"<title>{title}</title>" in page
    header = _header(page)
    # Above Evidently's dashboard, which still follows.
    assert page.index(header) < page.index('<div id="root_')
    assert f">{title}</h1>" in header
    n_drifted = len(result.drifted_features)
    assert n_drifted >= 2  # x0, x1 and c0 were shifted
    expected = f"Drift: {n_drifted} of {len(FEATURES)} features drifted (share {result.drift_share:.2f} >= threshold 0.30)"
    assert f">{html.escape(expected)}</p>" in header
    assert ", ".join(result.drifted_features) in header
    assert "Prediction &#x27;score&#x27; " in header
    assert "Current: 400 rows" in header and "Reference: 400 rows" in header


def test_report_verdict_without_drift_and_default_title(frames, tmp_path):
    reference, current = frames["reference"].head(300).copy(), frames["same"].head(300).copy()
    reference["ts"] = pd.date_range("2026-01-01", periods=300, freq="min", tz="UTC")
    current["ts"] = pd.date_range("2026-01-06 20:00", periods=300, freq="min", tz="UTC")
    path = tmp_path / "drift.html"
    result = compute_drift(reference, current, FEATURES[:3], report_path=path, drift_share_threshold=0.9)
    header = _header(path.read_text(encoding="utf-8"))
    assert "<title>Data drift as of 2026-01-07 00:59 UTC</title>" in path.read_text(encoding="utf-8")
    assert result.verdict(0.9).startswith("No drift: ")
    assert f">{html.escape(result.verdict(0.9))}</p>" in header
    assert "2026-01-06 20:00 UTC to 2026-01-07 00:59 UTC" in header


def test_report_title_is_escaped(frames, tmp_path):
    path = tmp_path / "drift.html"
    compute_drift(frames["reference"].head(100), frames["same"].head(100), FEATURES[:1], report_path=path,
                  title="<script>alert(1)</script>")
    page = path.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in _header(page)


@pytest.mark.parametrize("kwargs, problem", [
    ({"title": "  "}, "title must be a non-empty string"),
    ({"drift_share_threshold": 0}, "drift_share_threshold must be in (0, 1]"),
    ({"drift_share_threshold": 1.5}, "drift_share_threshold must be in (0, 1]"),
])
def test_bad_title_or_threshold(small, kwargs, problem):
    with pytest.raises(DriftInputError) as info:
        compute_drift(*small, FEATURES[:1], **kwargs)
    assert problem in str(info.value)
