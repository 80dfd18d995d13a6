"""Models are stored with skops and read back trusting Driftline's type list, not the model's."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from ml import modelio
from ml.simulator import CreditDefaultSimulator
from ml.training import fit_full, predict


def _rows(n: int = 300) -> pd.DataFrame:
    batch = CreditDefaultSimulator(seed=4, rows_per_period=n).batch(0)
    return batch.features.merge(batch.labels[["row_id", "label"]], on="row_id")


@pytest.mark.parametrize("estimator", ["sklearn.linear_model.LogisticRegression",
                                       "sklearn.ensemble.HistGradientBoostingClassifier",
                                       "sklearn.ensemble.RandomForestClassifier"])
def test_every_estimator_family_round_trips_through_skops(config, estimator, tmp_path):
    import skops.io

    cfg = config.model_copy(update={"estimator": config.estimator.model_copy(update={"class_path": estimator,
                                                                                    "params": {}})})
    rows = _rows()
    model = fit_full(cfg, rows)
    assert modelio.trusted_types(model) is not None  # no cloudpickle fallback for scikit-learn models
    path = tmp_path / "model.skops"
    skops.io.dump(model, str(path))
    back = modelio.load_skops(path)
    np.testing.assert_array_equal(predict(cfg, back, rows)[0], predict(cfg, model, rows)[0])


def test_a_model_naming_a_dangerous_function_is_refused(tmp_path):
    import skops.io

    evil = make_pipeline(FunctionTransformer(os.system), StandardScaler())
    assert modelio.trusted_types(evil) is None
    assert any("system" in t for t in modelio.untrusted_in(evil))
    path = tmp_path / "model.skops"
    skops.io.dump(evil, str(path))
    with pytest.raises(modelio.UntrustedModelError, match="system"):
        modelio.load_skops(path)


def test_extra_estimator_modules_are_trusted_too(monkeypatch):
    assert not modelio.is_trusted("mypkg.models.Fancy")
    monkeypatch.setenv("DRIFTLINE_ESTIMATOR_MODULES", "mypkg")
    assert modelio.is_trusted("mypkg.models.Fancy") and not modelio.is_trusted("mypkgx.Fancy")
