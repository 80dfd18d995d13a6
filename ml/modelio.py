"""How a candidate's model is written and read back: skops, with Driftline's own list of trusted
types, and cloudpickle only for a model skops cannot vouch for.

Loading a pickle runs whatever code it names, so a model is read through skops, which refuses any
type it is not told to trust. The list is Driftline's, not the model's: MLflow's own loader trusts
the list stored *inside* the model's MLmodel file, which whoever wrote the model chose. Trusted are
types from scikit-learn, NumPy, SciPy, the estimator modules allowed by settings
(``DRIFTLINE_ESTIMATOR_MODULES``) and ``functools.partial`` (scikit-learn's tree predictors keep
one; what it wraps is checked like any other type).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SKOPS = "skops"
CLOUDPICKLE = "cloudpickle"
_ALWAYS = ("sklearn", "numpy", "scipy")
_EXACT = ("functools.partial",)


class UntrustedModelError(ValueError):
    """A stored model names a type Driftline does not trust; it is not loaded."""


def _allowed_prefixes() -> tuple[str, ...]:
    from ml.settings import estimator_modules

    return tuple(dict.fromkeys((*_ALWAYS, *estimator_modules())))


def is_trusted(type_name: str, prefixes: tuple[str, ...] | None = None) -> bool:
    prefixes = _allowed_prefixes() if prefixes is None else prefixes
    return type_name in _EXACT or any(type_name == p or type_name.startswith(p + ".") for p in prefixes)


def trusted_types(model: Any) -> list[str] | None:
    """The types skops must be told to trust to read ``model`` back, when Driftline trusts them
    all; None when one is outside the trusted list (the model is then stored with cloudpickle)."""
    import skops.io

    needed = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    return list(needed) if all(is_trusted(t) for t in needed) else None


def untrusted_in(model: Any) -> list[str]:
    """The types of ``model`` Driftline does not trust (why it was stored with cloudpickle)."""
    import skops.io

    return [t for t in skops.io.get_untrusted_types(data=skops.io.dumps(model)) if not is_trusted(t)]


def load_skops(path: str | Path) -> Any:
    """Read a skops file, trusting only Driftline's list; any other type refuses the whole file."""
    import skops.io

    needed = skops.io.get_untrusted_types(file=str(path))
    refused = [t for t in needed if not is_trusted(t)]
    if refused:
        raise UntrustedModelError(f"{path}: names types Driftline does not trust: {', '.join(refused[:5])}")
    return skops.io.load(str(path), trusted=needed)


def load_logged_model(model_uri: str) -> Any:
    """A scikit-learn model logged by :class:`ml.tracking.MlflowTracker`: skops files through
    :func:`load_skops`; a cloudpickle file only as MLflow's flavour reads it (the version's lineage
    was checked before: only Driftline's own candidates get here). MLflow's code paths are not added
    to ``sys.path``."""
    import mlflow.sklearn
    import yaml
    from mlflow.tracking.artifact_utils import _download_artifact_from_uri

    local = Path(_download_artifact_from_uri(artifact_uri=model_uri))
    flavor = (yaml.safe_load((local / "MLmodel").read_text()).get("flavors") or {}).get("sklearn") or {}
    if flavor.get("serialization_format") == SKOPS:
        return load_skops(local / flavor["pickled_model"])
    return mlflow.sklearn.load_model(str(local))
