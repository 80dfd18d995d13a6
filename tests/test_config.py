"""Model configs: the shipped YAML loads, durations parse both ways, and every bad file fails with a
ConfigError naming the file, the field and the problem."""

from __future__ import annotations

import copy
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from ml.config import (
    BOOTSTRAP_SAMPLES_MAX,
    BOOTSTRAP_SAMPLES_MIN,
    CRON_PRESETS,
    DRIFT_METHODS,
    SIGNIFICANCE_MAX,
    ConfigError,
    ModelConfig,
    format_duration,
    load_all,
    load_config,
    load_models,
    parse_duration,
)
from ml.settings import estimator_modules

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "credit_default.yaml"
BASE: dict = yaml.safe_load(SHIPPED.read_text())


def _write(tmp_path: Path, data: dict | str, stem: str = "credit_default") -> Path:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _bad(tmp_path: Path, mutate) -> tuple[Path, str]:
    """Write the shipped config changed by ``mutate``; return the path and the ConfigError text."""
    data = copy.deepcopy(BASE)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return path, str(info.value)


# ---- the shipped file ---------------------------------------------------------------------------


def test_shipped_config_loads_with_its_values(config):
    assert isinstance(config, ModelConfig)
    assert config.name == "credit_default"
    assert config.task == "classification"
    assert config.source == str(SHIPPED)
    assert config.feature_names[:3] == ["age", "income", "debt_ratio"]
    assert len(config.feature_names) == 9
    assert config.categorical == ["employment_type", "home_ownership"]
    assert len(config.numerical) == 7 and "employment_type" not in config.numerical
    assert config.target.name == "default"
    assert config.target.labels == [0, 1]
    assert config.positive_label == 1
    assert config.estimator.class_path == "sklearn.linear_model.LogisticRegression"
    assert config.estimator.params == {"C": 1.0, "max_iter": 500}
    assert config.training.strategy == "full"
    assert config.windows.current == timedelta(days=1)
    assert config.windows.training == timedelta(days=4)
    assert config.windows.holdout == timedelta(days=1)
    assert config.windows.reference == "champion_training"
    assert config.triggers.cooldown == timedelta(hours=12)
    assert config.triggers.max_model_age == timedelta(days=5)
    assert config.triggers.drift_share == pytest.approx(0.3)
    assert config.triggers.min_new_labels == 500
    assert config.promotion.metric == "roc_auc"
    assert config.greater_is_better is True
    assert config.rollback.min_labelled_rows == 400
    assert config.triggers.rejection_backoff is None  # not set in the shipped file: no backoff


def test_rejection_backoff_is_a_duration(tmp_path):
    data = copy.deepcopy(BASE)
    data["triggers"]["rejection_backoff"] = "4w"
    config = load_config(_write(tmp_path, data))
    assert config.triggers.rejection_backoff == timedelta(weeks=4)


def test_snapshot_is_json_ready_and_uses_the_yaml_alias(config):
    snap = config.snapshot()
    assert snap["estimator"]["class"] == "sklearn.linear_model.LogisticRegression"
    assert "class_path" not in snap["estimator"]
    assert snap["name"] == "credit_default"
    yaml.safe_dump(snap)  # plain types only


def test_lower_is_better_metric_and_string_labels(tmp_path):
    data = copy.deepcopy(BASE)
    data["target"]["labels"] = ["repaid", "defaulted"]
    data["promotion"]["metric"] = "log_loss"
    data["windows"]["reference"] = "3d"
    config = load_config(_write(tmp_path, data))
    assert config.greater_is_better is False
    assert config.positive_label == "defaulted"
    assert config.windows.reference == timedelta(days=3)


# ---- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("30s", timedelta(seconds=30)),
        ("90m", timedelta(minutes=90)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        (" 4d ", timedelta(days=4)),
        (3600, timedelta(hours=1)),
        (2.5, timedelta(seconds=2.5)),
        (timedelta(minutes=5), timedelta(minutes=5)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["5 parsecs", "", "d", "1D", "-1d", "1.5.d", "twelve hours", True, None])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "value, text",
    [
        (timedelta(weeks=2), "2w"),
        (timedelta(days=4), "4d"),
        (timedelta(hours=12), "12h"),
        (timedelta(hours=36), "36h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=45), "45s"),
        (timedelta(0), "0s"),
        (timedelta(hours=101), "101h"),
        (timedelta(days=4, hours=5, seconds=1), "4.2d"),
        (timedelta(hours=2, minutes=30, seconds=1), "2.5h"),
        (timedelta(seconds=90.5), "1.5m"),
    ],
)
def test_format_duration(value, text):
    assert format_duration(value) == text


@pytest.mark.parametrize("text", ["45s", "90m", "12h", "4d", "2w", "36h"])
def test_format_parse_round_trip(text):
    assert format_duration(parse_duration(text)) == text


# ---- bad files ----------------------------------------------------------------------------------


def test_bad_yaml_syntax(tmp_path):
    path = _write(tmp_path, "name: credit_default\nfeatures: [unclosed\n  task: classification\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "not valid YAML" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "str"), ("", "NoneType")])
def test_not_a_mapping(tmp_path, text, kind):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "expected a mapping at the top level" in message
    assert kind in message


def test_unknown_top_level_key(tmp_path):
    path, message = _bad(tmp_path, lambda d: d.__setitem__("trigers", {"drift_share": 0.5}))
    assert str(path) in message
    assert "field 'trigers'" in message
    assert "Extra inputs are not permitted" in message


def test_unknown_nested_key(tmp_path):
    path, message = _bad(tmp_path, lambda d: d["triggers"].__setitem__("drift_shar", 0.5))
    assert str(path) in message
    assert "field 'triggers.drift_shar'" in message
    assert "Extra inputs" in message


@pytest.mark.parametrize("key", ["task", "features", "target", "estimator"])
def test_missing_required_field(tmp_path, key):
    path, message = _bad(tmp_path, lambda d: d.pop(key))
    assert str(path) in message
    assert f"field '{key}'" in message
    assert "Field required" in message


@pytest.mark.parametrize(
    "mutate, field, problem",
    [
        (lambda d: d["triggers"].__setitem__("min_new_labels", "many"), "triggers.min_new_labels", "valid integer"),
        (lambda d: d.__setitem__("features", "age"), "features", "valid list"),
        (lambda d: d["triggers"].__setitem__("on_new_labels", "maybe"), "triggers.on_new_labels", "valid boolean"),
        (lambda d: d["features"][0].__setitem__("kind", "numeric"), "features.0.kind", "'numerical' or 'categorical'"),
        (lambda d: d.__setitem__("task", "ranking"), "task", "'classification' or 'regression'"),
        (lambda d: d["triggers"].__setitem__("drift_share", 1.5), "triggers.drift_share", "less than or equal to 1"),
        (lambda d: d["promotion"].__setitem__("metric", "auc"), "promotion.metric", "unknown metric 'auc'"),
        (lambda d: d.__setitem__("features", []), "features", "at least 1 item"),
    ],
)
def test_wrong_type_or_value(tmp_path, mutate, field, problem):
    path, message = _bad(tmp_path, mutate)
    assert str(path) in message
    assert f"field '{field}'" in message
    assert problem in message


@pytest.mark.parametrize("reserved", ["label", "row_id", "ts", "score", "prediction"])
def test_reserved_feature_name(tmp_path, reserved):
    path, message = _bad(tmp_path, lambda d: d["features"].append({"name": reserved, "kind": "numerical"}))
    assert str(path) in message
    assert "field 'features.9.name'" in message
    assert f"'{reserved}' is reserved" in message


def test_duplicate_features(tmp_path):
    path, message = _bad(tmp_path, lambda d: d["features"].append({"name": "income", "kind": "categorical"}))
    assert str(path) in message
    assert "field 'features'" in message
    assert "duplicated names ['income']" in message


def test_target_also_a_feature(tmp_path):
    path, message = _bad(tmp_path, lambda d: d["features"].append({"name": "default", "kind": "numerical"}))
    assert str(path) in message
    assert "field 'target.name'" in message
    assert "'default' is also listed as a feature" in message


def test_metric_not_fitting_the_task(tmp_path):
    path, message = _bad(tmp_path, lambda d: d["promotion"].__setitem__("metric", "mae"))
    assert str(path) in message
    assert "field 'promotion.metric'" in message
    assert "'mae' does not fit task 'classification'" in message


def test_classification_metric_on_regression(tmp_path):
    def mutate(d):
        d["task"] = "regression"
        d["target"].pop("labels")
        d["estimator"] = {"class": "sklearn.linear_model.Ridge"}
        d["promotion"]["metric"] = "accuracy"

    path, message = _bad(tmp_path, mutate)
    assert str(path) in message
    assert "field 'promotion.metric'" in message
    assert "'accuracy' does not fit task 'regression'" in message


def test_regression_config_needs_no_labels(tmp_path):
    data = copy.deepcopy(BASE)
    data["task"] = "regression"
    data["target"].pop("labels")
    data["estimator"] = {"class": "sklearn.linear_model.Ridge"}
    data["promotion"]["metric"] = "mae"
    config = load_config(_write(tmp_path, data))
    assert config.greater_is_better is False
    assert config.positive_label is None


@pytest.mark.parametrize("labels", [None, []])
def test_classification_without_labels(tmp_path, labels):
    def mutate(d):
        if labels is None:
            d["target"].pop("labels")
        else:
            d["target"]["labels"] = labels

    path, message = _bad(tmp_path, mutate)
    assert str(path) in message
    assert "field 'target.labels'" in message
    assert "must list its label values" in message


@pytest.mark.parametrize("metric", ["roc_auc", "log_loss"])
def test_score_metric_needs_two_labels(tmp_path, metric):
    def mutate(d):
        d["target"]["labels"] = [0, 1, 2]
        d["promotion"]["metric"] = metric

    path, message = _bad(tmp_path, mutate)
    assert str(path) in message
    assert "field 'promotion.metric'" in message
    assert f"'{metric}' needs exactly two target.labels" in message


def test_label_metric_accepts_three_labels(tmp_path):
    data = copy.deepcopy(BASE)
    data["target"]["labels"] = [0, 1, 2]
    data["promotion"]["metric"] = "f1"
    assert load_config(_write(tmp_path, data)).target.labels == [0, 1, 2]


@pytest.mark.parametrize(
    "class_path, problem",
    [
        ("sklearn.linear_model.NoSuchModel", "has no attribute 'NoSuchModel'"),
        ("no_such_package_xyz.Model", "No module named 'no_such_package_xyz'"),
        ("LogisticRegression", "not a dotted class path"),
    ],
)
def test_estimator_class_that_cannot_be_imported(tmp_path, monkeypatch, class_path, problem):
    # Allowed, so the import itself is what fails (a package outside the allow-list is never imported).
    monkeypatch.setenv("DRIFTLINE_ESTIMATOR_MODULES", "no_such_package_xyz")
    path, message = _bad(tmp_path, lambda d: d["estimator"].__setitem__("class", class_path))
    assert str(path) in message
    assert "field 'estimator.class'" in message
    assert problem in message


def test_incremental_strategy_needs_partial_fit(tmp_path):
    path, message = _bad(tmp_path, lambda d: d["training"].__setitem__("strategy", "incremental"))
    assert str(path) in message
    assert "field 'training.strategy'" in message
    assert "partial_fit" in message
    assert "sklearn.linear_model.LogisticRegression" in message


def test_incremental_strategy_with_sgd_is_fine(tmp_path):
    data = copy.deepcopy(BASE)
    data["training"]["strategy"] = "incremental"
    data["estimator"] = {"class": "sklearn.linear_model.SGDClassifier", "params": {"loss": "log_loss"}}
    config = load_config(_write(tmp_path, data))
    assert config.training.strategy == "incremental"
    assert config.estimator.load_class().__name__ == "SGDClassifier"


def test_name_must_match_file_stem(tmp_path):
    path = _write(tmp_path, copy.deepcopy(BASE), stem="credit_risk")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "field 'name'" in message
    assert "'credit_default' must match the file name 'credit_risk'" in message


def test_name_must_be_an_identifier(tmp_path):
    data = copy.deepcopy(BASE)
    data["name"] = "Credit-Default"
    path = _write(tmp_path, data, stem="Credit-Default")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "field 'name'" in str(info.value)
    assert "lower-case letters" in str(info.value)


@pytest.mark.parametrize(
    "section, key",
    [("windows", "training"), ("windows", "current"), ("windows", "reference"), ("triggers", "cooldown"),
     ("triggers", "max_model_age"), ("triggers", "rejection_backoff")],
)
def test_bad_duration(tmp_path, section, key):
    path, message = _bad(tmp_path, lambda d: d[section].__setitem__(key, "5 parsecs"))
    assert str(path) in message
    assert f"field '{section}.{key}'" in message
    assert "not a duration: '5 parsecs'" in message


def test_every_problem_is_reported_at_once(tmp_path):
    def mutate(d):
        d["trigers"] = {}
        d["windows"]["holdout"] = "soon"

    _, message = _bad(tmp_path, mutate)
    assert "field 'trigers'" in message
    assert "field 'windows.holdout'" in message


# ---- a folder of configs -------------------------------------------------------------------------


def test_load_all_sorted_by_name(tmp_path):
    for name in ("zeta_model", "alpha_model", "credit_default"):
        data = copy.deepcopy(BASE)
        data["name"] = name
        _write(tmp_path, data, stem=name)
    (tmp_path / "notes.txt").write_text("not a config")
    configs = load_all(tmp_path)
    assert [c.name for c in configs] == ["alpha_model", "credit_default", "zeta_model"]
    assert configs[0].source == str(tmp_path / "alpha_model.yaml")


def test_load_all_raises_on_any_bad_file(tmp_path):
    _write(tmp_path, copy.deepcopy(BASE))
    bad = copy.deepcopy(BASE)
    bad["name"] = "broken"
    bad["task"] = "ranking"
    path = _write(tmp_path, bad, stem="broken")
    with pytest.raises(ConfigError) as info:
        load_all(tmp_path)
    assert str(path) in str(info.value)
    assert "field 'task'" in str(info.value)


def test_load_all_empty_dir(tmp_path):
    assert load_all(tmp_path) == []


def test_load_all_shipped_models_dir():
    names = [c.name for c in load_all(ROOT / "models")]
    assert "credit_default" in names
    assert names == sorted(names)


def test_load_all_shipped_yaml_everywhere_parses():
    # Every YAML the repository ships (models and the replay configs) passes the stricter checks.
    shipped = sorted((ROOT / "models").glob("*.yaml")) + sorted((ROOT / "bench" / "configs").glob("*.yaml"))
    assert len(shipped) >= 4
    for folder in (ROOT / "models", ROOT / "bench" / "configs"):
        configs, errors = load_models(folder)
        assert errors == {}
        assert [c.name for c in configs] == sorted(p.stem for p in folder.glob("*.yaml"))


# ---- one bad file does not hide the good ones ----------------------------------------------------


def test_load_models_keeps_good_configs_and_reports_each_bad_file(tmp_path):
    _write(tmp_path, copy.deepcopy(BASE))
    broken = copy.deepcopy(BASE)
    broken["name"] = "broken"
    broken["triggers"]["schedule"] = "every day at noon"
    broken_path = _write(tmp_path, broken, stem="broken")
    garbled = _write(tmp_path, "name: garbled\nfeatures: [unclosed\n  task: classification\n", stem="garbled")
    configs, errors = load_models(tmp_path)
    assert [c.name for c in configs] == ["credit_default"]
    assert sorted(errors) == sorted([str(broken_path), str(garbled)])
    assert "field 'triggers.schedule'" in errors[str(broken_path)]
    assert "not valid YAML" in errors[str(garbled)]
    for message in errors.values():
        assert "\n" not in message  # one line each: it becomes one import error per file


def test_load_models_empty_dir(tmp_path):
    assert load_models(tmp_path) == ([], {})


# ---- triggers.schedule: Airflow presets or 5-field cron ------------------------------------------


@pytest.mark.parametrize(
    "schedule, problem",
    [
        ("every day at noon", "need 5 fields"),
        ("0 12 * *", "need 5 fields"),
        ("0 0 * * * *", "need 5 fields"),  # croniter reads a 6th field as seconds; Airflow does not
        ("61 * * * *", "not a valid cron expression"),
        ("0 0 30 2 *", "never fires"),
        ("@fortnightly", "unknown preset"),
        ("@once", "unknown preset"),  # not a cron: CronTriggerTimetable refuses it
    ],
)
def test_bad_schedule(tmp_path, schedule, problem):
    path, message = _bad(tmp_path, lambda d: d["triggers"].__setitem__("schedule", schedule))
    assert str(path) in message
    assert "field 'triggers.schedule'" in message
    assert problem in message


@pytest.mark.parametrize(
    "schedule", ["@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "0 12 * * 1-5",
                 "*/15 * * * *", "30 6 1 */3 *", None],
)
def test_good_schedule_is_one_airflow_accepts(tmp_path, schedule):
    from airflow.sdk import CronTriggerTimetable

    data = copy.deepcopy(BASE)
    data["triggers"]["schedule"] = schedule
    assert load_config(_write(tmp_path, data)).triggers.schedule == schedule
    if schedule is not None:
        CronTriggerTimetable(schedule, timezone="UTC").validate()  # what the DAG file builds from it


def test_cron_presets_are_airflows():
    from airflow.sdk.definitions.timetables._cron import CRON_PRESETS as AIRFLOW_PRESETS

    assert CRON_PRESETS == AIRFLOW_PRESETS


# ---- durations and bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, key, value, problem",
    [
        ("windows", "current", "0d", "must be positive"),
        ("windows", "current", -60, "must be positive"),
        ("windows", "training", 0, "must be positive"),
        ("windows", "holdout", "0h", "must be positive"),
        ("windows", "reference", "0d", "must be positive"),
        ("triggers", "max_model_age", "0d", "must be positive"),
        ("triggers", "rejection_backoff", "0s", "must be positive"),
        ("triggers", "cooldown", -3600, "must be >= 0"),
    ],
)
def test_durations_must_be_positive(tmp_path, section, key, value, problem):
    path, message = _bad(tmp_path, lambda d: d[section].__setitem__(key, value))
    assert str(path) in message
    assert f"field '{section}.{key}'" in message
    assert problem in message


def test_zero_cooldown_is_allowed(tmp_path):
    data = copy.deepcopy(BASE)
    data["triggers"]["cooldown"] = 0
    assert load_config(_write(tmp_path, data)).triggers.cooldown == timedelta(0)


@pytest.mark.parametrize("holdout", ["4d", "5d"])
def test_holdout_shorter_than_training(tmp_path, holdout):
    path, message = _bad(tmp_path, lambda d: d["windows"].__setitem__("holdout", holdout))  # training: 4d
    assert str(path) in message
    assert "field 'windows.holdout'" in message
    assert f"windows.holdout ({holdout}) must be shorter than the training window" in message


@pytest.mark.parametrize(
    "value, ok", [(BOOTSTRAP_SAMPLES_MIN - 1, False), (BOOTSTRAP_SAMPLES_MIN, True),
                  (BOOTSTRAP_SAMPLES_MAX, True), (BOOTSTRAP_SAMPLES_MAX + 1, False)],
)
def test_bootstrap_samples_bounds(tmp_path, value, ok):
    assert (BOOTSTRAP_SAMPLES_MIN, BOOTSTRAP_SAMPLES_MAX) == (100, 100_000)  # as README documents
    data = copy.deepcopy(BASE)
    data["promotion"]["bootstrap_samples"] = value
    path = _write(tmp_path, data)
    if ok:
        assert load_config(path).promotion.bootstrap_samples == value
    else:
        with pytest.raises(ConfigError, match="field 'promotion.bootstrap_samples'"):
            load_config(path)


def test_min_labelled_rows_at_least_one(tmp_path):
    _, message = _bad(tmp_path, lambda d: d["rollback"].__setitem__("min_labelled_rows", 0))
    assert "field 'rollback.min_labelled_rows'" in message
    assert "greater than or equal to 1" in message


# ---- promotion.significance: exactly what the gate accepts ---------------------------------------


@pytest.mark.parametrize("value", [0.0, 0.01, 0.25, 0.45, 0.4999, 0.5, 0.6, 0.99, -0.1, float("nan")])
def test_config_refuses_exactly_what_the_gate_refuses(tmp_path, value):
    from ml.evaluation import evaluate_candidate

    try:
        evaluate_candidate(metric="accuracy", y_true=[0, 1, 1, 0], challenger_pred=[0, 1, 1, 0],
                           significance=value, n_resamples=100)
        gate_accepts = True
    except ValueError as exc:
        assert "significance must be in" in str(exc)
        gate_accepts = False
    data = copy.deepcopy(BASE)
    data["promotion"]["significance"] = value
    path = _write(tmp_path, data)
    if gate_accepts:
        assert load_config(path).promotion.significance == value
    else:
        with pytest.raises(ConfigError, match=r"field 'promotion.significance': significance must be in \(0, 0.5\)"):
            load_config(path)
    assert gate_accepts == (0 < value < SIGNIFICANCE_MAX)


# ---- estimator: allowed modules only, known parameters only --------------------------------------


@pytest.fixture
def planted_module(tmp_path, monkeypatch):
    """An importable module outside the allow-list that leaves a mark when imported."""
    folder = tmp_path / "planted"
    folder.mkdir()
    mark = tmp_path / "imported.mark"
    (folder / "planted_estimators_xyz.py").write_text(
        f"open({str(mark)!r}, 'w').close()\n"
        "class Model:\n"
        "    def __init__(self, **kwargs):\n"
        "        self.kwargs = kwargs\n"
        "    def fit(self, X, y):\n"
        "        return self\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("DRIFTLINE_ESTIMATOR_MODULES", raising=False)
    yield mark
    sys.modules.pop("planted_estimators_xyz", None)


def test_estimator_outside_the_allow_list_is_refused_before_import(tmp_path, planted_module):
    path, message = _bad(tmp_path, lambda d: d["estimator"].__setitem__("class", "planted_estimators_xyz.Model"))
    assert str(path) in message
    assert "field 'estimator.class'" in message
    assert "not from an allowed module (sklearn)" in message
    assert "DRIFTLINE_ESTIMATOR_MODULES" in message
    assert not planted_module.exists()
    assert "planted_estimators_xyz" not in sys.modules


def test_allow_list_is_extended_by_the_setting(tmp_path, monkeypatch, planted_module):
    monkeypatch.setenv("DRIFTLINE_ESTIMATOR_MODULES", "xgboost, planted_estimators_xyz.")
    assert estimator_modules() == ("sklearn", "xgboost", "planted_estimators_xyz")
    data = copy.deepcopy(BASE)
    data["estimator"] = {"class": "planted_estimators_xyz.Model", "params": {"anything": 1}}  # takes **kwargs
    config = load_config(_write(tmp_path, data))
    assert config.estimator.load_class().__name__ == "Model"
    assert planted_module.exists()


@pytest.mark.parametrize("class_path", ["os.system", "subprocess.Popen", "sklearnx.Model", "builtins.eval"])
def test_other_modules_are_refused(tmp_path, class_path):
    _, message = _bad(tmp_path, lambda d: d["estimator"].__setitem__("class", class_path))
    assert "field 'estimator.class'" in message
    assert f"'{class_path}' is not from an allowed module" in message


def test_bad_allow_list_setting_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTLINE_ESTIMATOR_MODULES", "xgboost,my pkg")
    _, message = _bad(tmp_path, lambda d: None)
    assert "field 'estimator.class'" in message
    assert "DRIFTLINE_ESTIMATOR_MODULES: 'my pkg' is not a module name" in message


def test_estimator_must_be_a_class(tmp_path):
    _, message = _bad(tmp_path, lambda d: d["estimator"].__setitem__("class", "sklearn.metrics.accuracy_score"))
    assert "field 'estimator.class'" in message
    assert "not a class" in message


def test_unknown_estimator_param_names_the_close_ones(tmp_path):
    _, message = _bad(tmp_path, lambda d: d["estimator"]["params"].update(max_iters=500, penality="l2"))
    assert "field 'estimator.params'" in message
    assert "'max_iters' (did you mean max_iter?)" in message
    assert "'penality' (did you mean penalty?)" in message
    assert "its parameters are [" in message and "'class_weight'" in message


# ---- drift methods: Evidently's --------------------------------------------------------------------


def test_drift_methods_are_evidentlys_registry():
    from evidently.legacy.calculations.stattests import registry

    kinds = {"num": "numerical", "cat": "categorical"}
    installed = {
        name: frozenset(kinds[t.value] for t in tests if t.value in kinds)
        for name, tests in registry._registered_stat_tests.items()
    }
    assert DRIFT_METHODS == {name: k for name, k in installed.items() if k}


@pytest.mark.parametrize(
    "mutate, field, problem",
    [
        (lambda d: d["features"][0].__setitem__("drift_method", "kss"), "features.0.drift_method",
         "unknown drift method 'kss' (did you mean 'ks'"),
        (lambda d: d["features"][0].__setitem__("drift_method", "chisquare"), "features.0.drift_method",
         "'chisquare' does not apply to numerical columns"),
        (lambda d: d["features"][7].__setitem__("drift_method", "wasserstein"), "features.7.drift_method",
         "'wasserstein' does not apply to categorical columns"),
        (lambda d: d["triggers"].__setitem__("num_method", "emd"), "triggers.num_method",
         "unknown drift method 'emd'"),
        (lambda d: d["triggers"].__setitem__("num_method", "z"), "triggers.num_method",
         "'z' does not apply to numerical columns"),
        (lambda d: d["triggers"].__setitem__("cat_method", "ks"), "triggers.cat_method",
         "'ks' does not apply to categorical columns"),
    ],
)
def test_bad_drift_method(tmp_path, mutate, field, problem):
    path, message = _bad(tmp_path, mutate)
    assert str(path) in message
    assert f"field '{field}'" in message
    assert problem in message


def test_unknown_drift_method_lists_the_valid_ones(tmp_path):
    _, message = _bad(tmp_path, lambda d: d["triggers"].__setitem__("num_method", "nope"))
    assert str(sorted(DRIFT_METHODS)) in message


def test_good_drift_methods(tmp_path):
    data = copy.deepcopy(BASE)
    data["features"][0]["drift_method"] = "psi"
    data["features"][7]["drift_method"] = "TVD"
    data["triggers"].update(num_method="wasserstein", cat_method="jensenshannon")
    config = load_config(_write(tmp_path, data))
    assert config.features[7].drift_method == "TVD"
    assert (config.triggers.num_method, config.triggers.cat_method) == ("wasserstein", "jensenshannon")


# ---- per-feature value checks: min, max, categories ------------------------------------------------


def test_feature_bounds_and_categories_parse(tmp_path):
    data = copy.deepcopy(BASE)
    data["features"][0].update(min=18, max=100)  # age
    data["features"][2].update(min=0.0)  # debt_ratio: a lower bound alone
    data["features"][7]["categories"] = ["employed", "self_employed", 3]  # employment_type
    config = load_config(_write(tmp_path, data))
    age, debt_ratio = config.features[0], config.features[2]
    assert (age.min, age.max) == (18.0, 100.0) and isinstance(age.min, float)
    assert (debt_ratio.min, debt_ratio.max) == (0.0, None)
    # Text, as the store holds categorical values.
    assert config.features[7].categories == ("employed", "self_employed", "3")
    assert config.features[1].min is None and config.features[8].categories is None
    assert config.snapshot()["features"][7]["categories"] == ["employed", "self_employed", "3"]


@pytest.mark.parametrize(
    "index, change, field, problem",
    [
        (0, {"min": 100, "max": 18}, "features.0.min", "100 is above max 18 for 'age'"),
        (0, {"categories": ["a", "b"]}, "features.0.categories", "only a categorical feature"),
        (7, {"min": 0}, "features.7.min", "only a numerical feature has bounds"),
        (7, {"max": 1}, "features.7.max", "only a numerical feature has bounds"),
        (7, {"categories": []}, "features.7.categories", "at least one value"),
        (7, {"categories": ["a", "a", "b"]}, "features.7.categories", "duplicated values ['a']"),
        (7, {"categories": "a, b"}, "features.7.categories", "must be a list"),
        (7, {"categories": ["a", True]}, "features.7.categories", "write it in quotes"),
        (0, {"min": "18"}, "features.0.min", "must be a number"),
        (0, {"max": True}, "features.0.max", "must be a number"),
        (0, {"max": float("inf")}, "features.0.max", "finite number"),
    ],
)
def test_bad_feature_value_checks(tmp_path, index, change, field, problem):
    path, message = _bad(tmp_path, lambda d: d["features"][index].update(change))
    assert str(path) in message
    assert f"field '{field}'" in message
    assert problem in message


@pytest.mark.parametrize("params, problem", [({"C": -1.0}, "'C' parameter"), ({"max_iter": "many"}, "'max_iter'")])
def test_estimator_param_values_are_checked_at_parse(params, problem, tmp_path):
    from ml.config import ConfigError, load_config

    text = (Path(__file__).resolve().parent.parent / "models" / "credit_default.yaml").read_text()
    text = text.replace("params: {C: 1.0, max_iter: 500}", "params: " + str(params).replace("'", ""))
    (tmp_path / "credit_default.yaml").write_text(text)
    with pytest.raises(ConfigError, match=rf"field 'estimator.params': .*{problem}"):
        load_config(tmp_path / "credit_default.yaml")


def test_shadow_gate_and_serving_shadow_options(tmp_path):
    data = copy.deepcopy(BASE)
    data.setdefault("promotion", {}).update(gate="shadow", min_shadow_rows=120)
    data["serving"] = {"shadow": True}
    config = load_config(_write(tmp_path, data))
    assert (config.promotion.gate, config.promotion.min_shadow_rows, config.serving.shadow) == ("shadow", 120, True)
    defaults = load_config(_write(tmp_path, copy.deepcopy(BASE)))
    assert (defaults.promotion.gate, defaults.promotion.min_shadow_rows, defaults.serving.shadow) == ("holdout", 200,
                                                                                                      False)
    _, error = _bad(tmp_path, lambda d: d.setdefault("promotion", {}).update(gate="canary"))
    assert "promotion.gate" in error
    _, error = _bad(tmp_path, lambda d: d.setdefault("promotion", {}).update(min_shadow_rows=50))
    assert "promotion.min_shadow_rows" in error and "gate: shadow" in error
    _, error = _bad(tmp_path, lambda d: d.setdefault("promotion", {}).update(gate="shadow", min_shadow_rows=0))
    assert "promotion.min_shadow_rows" in error
    _, error = _bad(tmp_path, lambda d: d.update(serving={"shadow": "perhaps"}))
    assert "serving.shadow" in error
    _, error = _bad(tmp_path, lambda d: d.update(serving={"canary": 0.1}))
    assert "serving.canary" in error


def test_serving_canary_fraction_is_a_share_below_one_under_the_shadow_gate(tmp_path):
    def canary(value, gate="shadow"):
        def mutate(d):
            d["serving"] = {"canary_fraction": value}
            d.setdefault("promotion", {})["gate"] = gate
        return mutate

    data = copy.deepcopy(BASE)
    canary(0.1)(data)
    data["serving"]["shadow"] = True  # both: champion-answered rows shadowed, canary rows paired the other way
    config = load_config(_write(tmp_path, data))
    assert (config.serving.canary_fraction, config.serving.shadow) == (0.1, True)
    assert load_config(_write(tmp_path, copy.deepcopy(BASE))).serving.canary_fraction == 0.0  # off by default
    data = copy.deepcopy(BASE)
    canary(0, gate="holdout")(data)
    assert load_config(_write(tmp_path, data)).serving.canary_fraction == 0.0  # 0 is off: any gate
    for value, words in [(1, "every request goes to the challenger"), (1.5, "every request"),
                         (-0.1, "negative"), (True, "share of requests"), ("lots", "valid number"),
                         (float("nan"), "finite")]:
        _, error = _bad(tmp_path, canary(value))
        assert "field 'serving.canary_fraction'" in error and words in error, (value, error)
    # Under the holdout gate a challenger is judged in the run that trained it: no one would judge a canary.
    _, error = _bad(tmp_path, canary(0.1, gate="holdout"))
    assert "serving.canary_fraction" in error and "promotion.gate: shadow" in error


@pytest.mark.parametrize("max_training, ok", [("2d", False), ("4d", True), ("12w", True), ("0d", False), (None, True)])
def test_max_training_widens_the_training_window_only(tmp_path, max_training, ok):
    def patch(d):
        d["windows"]["max_training"] = max_training  # training: 4d

    if ok:
        data = copy.deepcopy(BASE)
        patch(data)
        windows = load_config(_write(tmp_path, data)).windows
        assert windows.max_training == (None if max_training is None else parse_duration(max_training))
        return
    _, message = _bad(tmp_path, patch)
    assert "field 'windows.max_training'" in message
    assert "must be at least windows.training (4d)" in message or "must be positive" in message


def test_refit_is_off_unless_asked(tmp_path):
    data = copy.deepcopy(BASE)
    assert load_config(_write(tmp_path, data)).promotion.refit is False
    data["promotion"]["refit"] = True
    assert load_config(_write(tmp_path, data)).promotion.refit is True
    _, message = _bad(tmp_path, lambda d: d["promotion"].__setitem__("refit", "sometimes"))
    assert "field 'promotion.refit'" in message


def test_refit_needs_the_holdout_gate(tmp_path):
    def patch(d):
        d["promotion"].update(refit=True, gate="shadow")

    _, message = _bad(tmp_path, patch)
    assert "field 'promotion.refit'" in message and "'shadow' gate keeps no holdout" in message


def test_approval_needs_the_holdout_gate(tmp_path):
    def patch(d):
        d["promotion"].update(approval="required", gate="shadow")

    _, message = _bad(tmp_path, patch)
    assert "field 'promotion.approval'" in message and "'shadow' gate promotes without asking" in message


# ---- triggers.error_detector and windows.reference: season ---------------------------------------


def test_error_detector_table_is_rivers_signatures():
    import inspect

    from river import drift

    from ml.config import ERROR_DETECTORS

    for kind, (name, params) in ERROR_DETECTORS.items():
        signature = inspect.signature(getattr(drift, name)).parameters
        taken = {p: v.default for p, v in signature.items() if p != "window"}  # KSWIN's window: data, not a setting
        assert {p: default for p, (_, default) in params.items()} == taken, kind


def test_error_detector_parses_flat_with_rivers_params(tmp_path):
    data = copy.deepcopy(BASE)
    data["triggers"]["error_detector"] = {"kind": "adwin", "delta": 0.01, "min_rows": 300}
    spec = load_config(_write(tmp_path, data)).triggers.error_detector
    assert (spec.kind, spec.min_rows, spec.params, spec.detector_name) == ("adwin", 300, {"delta": 0.01}, "ADWIN")
    data["triggers"]["error_detector"] = "page_hinkley"
    spec = load_config(_write(tmp_path, data)).triggers.error_detector
    assert spec.min_rows == 100 and spec.river_params() == {"mode": "up"}  # rises only
    data["triggers"]["error_detector"] = {"kind": "kswin"}
    assert load_config(_write(tmp_path, data)).triggers.error_detector.river_params() == {"seed": 0}  # repeatable
    assert load_config(_write(tmp_path, BASE)).triggers.error_detector is None  # off by default


@pytest.mark.parametrize(
    "detector, problem",
    [
        ({"kind": "adwn"}, "Input should be 'adwin', 'page_hinkley' or 'kswin'"),
        ({"kind": "adwin", "deltaa": 0.1}, "'deltaa' is not a parameter of adwin (did you mean 'delta'?)"),
        ({"kind": "adwin", "delta": 1.5}, "adwin parameter 'delta' must be in (0, 1), got 1.5"),
        ({"kind": "adwin", "clock": 0}, "adwin parameter 'clock' must be a whole number >= 1, got 0"),
        ({"kind": "page_hinkley", "threshold": "high"}, "page_hinkley parameter 'threshold' must be a number"),
        ({"kind": "page_hinkley", "mode": "both"}, "parameter 'mode' must be 'up'"),
        ({"kind": "kswin", "stat_size": 100}, "'stat_size' (100) must be smaller than 'window_size' (100)"),
        ({"kind": "kswin", "min_rows": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_error_detector(tmp_path, detector, problem):
    path, message = _bad(tmp_path, lambda d: d["triggers"].__setitem__("error_detector", detector))
    assert str(path) in message and "field 'triggers.error_detector" in message
    assert problem in message


def test_seasonal_reference_parses_and_needs_its_season(tmp_path):
    data = copy.deepcopy(BASE)
    data["windows"].update(reference="season", season="52w")
    windows = load_config(_write(tmp_path, data)).windows
    assert windows.reference == "season" and windows.season == timedelta(weeks=52)
    for change, problem in [
        ({"reference": "season"}, "windows.reference 'season' needs windows.season"),
        ({"season": "7d"}, "only used with windows.reference 'season' (reference is 'champion_training')"),
        ({"reference": "season", "season": "2h"}, "windows.season (2h) must be at least windows.current (1d)"),
        ({"reference": "season", "season": "-1d"}, "not a duration"),
    ]:
        _, message = _bad(tmp_path, lambda d, change=change: d["windows"].update(change))
        assert "field 'windows.season'" in message and problem in message
