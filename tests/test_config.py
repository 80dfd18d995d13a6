"""Model configs: the shipped YAML loads, durations parse both ways, and every bad file fails with a
ConfigError naming the file, the field and the problem."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from ml.config import ConfigError, ModelConfig, format_duration, load_all, load_config, parse_duration

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
def test_estimator_class_that_cannot_be_imported(tmp_path, class_path, problem):
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
