"""The MLflow model registry, as Driftline moves models through it.

Aliases are the source of truth: ``champion``, ``challenger``, ``previous-champion``. Legacy stages
are derived from them (champion -> Production, challenger -> Staging, any other version that was in
either -> Archived) because users still look at the stage column, though MLflow 3 deprecates it.

Every move is ordered so that the model is never without a champion (the champion alias is moved
in one atomic write, never deleted) and so that re-running a move after a crash at any step
converges to the same state. Each move ends in one audit-log entry.

Every move that changes aliases holds the model's lock (``Store.model_lock``: a PostgreSQL advisory
lock, or a file lock next to a SQLite store) and reads the aliases only once it holds it, so moves
of one model never interleave, whichever process, thread or machine makes them (MLflow itself has
no compare-and-set: the last writer of an alias wins).
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from ml.ports import LoggedModel, RowStore

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous-champion"
# Audit actions written before a move (its completion is "promoted" / "rolled_back").
INTENT_PROMOTE = "promote_requested"
INTENT_ROLLBACK = "rollback_requested"
COMPLETIONS = ("promoted", "rejected", "rolled_back")
# Audit action (and verdict tag) of a blessed candidate whose refit was promoted in its place.
REFITTED = "refitted"
ABANDONED = "move_abandoned"
TAG = "driftline."
STAGE_FOR_ALIAS = {CHAMPION: "Production", CHALLENGER: "Staging"}
_TAG_LIMIT = 4900  # MLflow caps tag values at 5000 characters
_DETAILS_LIMIT = 7900  # MLflow's tag value limit is 8000 characters on SQL stores
DETAILS = TAG + "details"
# Own tags in the versions table: why it exists, the verdict, the headline metric and gain, its
# data window, the Airflow run. Everything else is in DETAILS.
SHOWN = frozenset({"trigger", "verdict", "data_start", "data_end", "dag_run_id", "promoted_at", "refit_of"})
_EVAL_DETAILS = frozenset({"eval_champion", "eval_ci_low", "eval_ci_high", "eval_rows", "eval_verdict"})
_Move = TypeVar("_Move", bound=Callable[..., Any])


class RegistryError(RuntimeError):
    """A registry move that cannot be made (e.g. nothing to roll back to)."""


class UnblessedModelError(RegistryError):
    """A version Driftline did not register (or, to serve, did not promote): it is never loaded."""


def shown(key: str) -> bool:
    """Tags kept as their own tags: what a person filters the versions table on."""
    return key in SHOWN or (key.startswith("eval_") and key not in _EVAL_DETAILS)


def details(tags: dict[str, str]) -> dict[str, str]:
    """The version's ``driftline.details`` JSON tag (empty when absent or unreadable)."""
    try:
        found = json.loads(tags.get(DETAILS) or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _fit_json(values: dict[str, str], limit: int) -> str:
    """JSON of ``values`` within ``limit`` characters: the longest values are shortened (marked with
    "…") rather than the JSON cut, which would lose every value."""
    values = dict(values)
    text = json.dumps(values, sort_keys=True)
    while len(text) > limit:
        key = max(values, key=lambda k: len(values[k]))
        if len(values[key]) <= 16:
            raise ValueError(f"registry details: {len(values)} values do not fit in {limit} characters")
        values[key] = values[key][: len(values[key]) // 2] + "…"
        text = json.dumps(values, sort_keys=True)
    return text


def is_missing(exc: Exception) -> bool:
    """True when an MLflow error says the model or alias does not exist (only that means "none")."""
    code = getattr(exc, "error_code", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc))


def checkpoint(step: str) -> None:
    """Called between registry writes. Does nothing; tests replace it to inject a crash at a step."""


def _locked(move: _Move) -> _Move:
    """Run a registry move under its model's lock."""

    @functools.wraps(move)
    def wrapper(self: Registry, *args: Any, **kwargs: Any) -> Any:
        with self.store.model_lock(self.name):
            return move(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class VersionInfo:
    version: int
    tags: dict[str, str]
    aliases: tuple[str, ...]
    stage: str
    source: str
    run_id: str | None

    def tag(self, key: str, default: str | None = None) -> str | None:
        if TAG + key in self.tags:
            return self.tags[TAG + key]
        return details(self.tags).get(key, default)

    def tag_float(self, key: str) -> float | None:
        value = self.tag(key)
        return None if value in (None, "", "None") else float(value)


class Registry:
    def __init__(self, name: str, store: RowStore, mlflow_client: Any) -> None:
        self.name = name
        self.store = store
        self.client = mlflow_client

    # ---- reads --------------------------------------------------------------------------------

    def exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
            return True
        except MlflowException as exc:
            if not is_missing(exc):
                raise  # fail closed: an unreachable registry is not an empty one
            return False

    def ensure_model(self, description: str, tags: dict[str, str] | None = None) -> None:
        from mlflow.exceptions import MlflowException

        if not self.exists():
            try:
                self.client.create_registered_model(self.name, tags=tags or {}, description=description)
                return
            except MlflowException:
                pass  # created meanwhile by a concurrent run
        self.client.update_registered_model(self.name, description=description)
        for key, value in (tags or {}).items():
            self.client.set_registered_model_tag(self.name, key, value)

    def version_for(self, alias: str) -> int | None:
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as exc:
            if not is_missing(exc):
                # Fail closed: a registry that cannot answer (connection refused, 5xx) must not read
                # as "no champion", or the gate would let any candidate replace the real one.
                raise
            return None

    def champion(self) -> int | None:
        return self.version_for(CHAMPION)

    def info(self, version: int) -> VersionInfo:
        mv = self.client.get_model_version(self.name, str(version))
        return VersionInfo(
            version=int(mv.version),
            tags=dict(mv.tags or {}),
            aliases=tuple(mv.aliases or ()),
            stage=mv.current_stage or "None",
            source=mv.source,
            run_id=mv.run_id,
        )

    def versions(self) -> list[VersionInfo]:
        found = self.client.search_model_versions(f"name='{self.name}'")
        return sorted(
            (
                VersionInfo(
                    int(mv.version), dict(mv.tags or {}), tuple(mv.aliases or ()), mv.current_stage or "None",
                    mv.source, mv.run_id,
                )
                for mv in found
            ),
            key=lambda v: v.version,
        )

    def load_model(self, version: int, *, serving: bool = False) -> Any:
        """The model of ``version``, once :meth:`check_blessed` says Driftline registered it (and,
        with ``serving``, promoted it): loading a model runs code, so nothing else is loaded."""
        self.check_blessed(version, serving=serving)
        return self._load(version)

    def _load(self, version: int) -> Any:
        from ml.modelio import load_logged_model

        return load_logged_model(f"models:/{self.name}/{version}")

    def check_blessed(self, version: int, *, serving: bool = False) -> None:
        """Raise :class:`UnblessedModelError` (and write a ``refused_load`` audit entry) unless the
        store's audit log, which MLflow's API cannot write, shows Driftline registered this version
        from this run and source; with ``serving``, also that Driftline made it champion (promoted or
        restored by a rollback). Registry tags alone prove nothing: anyone who can reach MLflow can
        set them."""
        info = self.info(version)
        entries = [e for e in self.store.audit_log(self.name, ["registered", "promoted", "rolled_back", INTENT_PROMOTE,
                                                               INTENT_ROLLBACK]) if e["version"] == version]
        registered = [e for e in entries if e["action"] == "registered"]
        why = None
        if not any((e["details"] or {}).get("mlflow_run_id") == info.run_id
                   and (e["details"] or {}).get("model_source", info.source) == info.source for e in registered):
            why = (f"no Driftline registration of v{version} from run {info.run_id} ({info.source}) in the audit log: "
                   "it was not trained and registered by Driftline")
        # A promotion's intent is written before the alias moves: a poller that sees the new alias
        # before the completion entry must not refuse it.
        elif serving and not any(e["action"] != "registered" for e in entries):
            why = f"v{version} was never promoted by Driftline (champion alias set outside Driftline?)"
        if why is not None:
            self.store.audit(self.name, "refused_load", version=version,
                             details={"why": why, "run_id": info.run_id, "source": info.source, "serving": serving})
            raise UnblessedModelError(f"{self.name}: refusing to load v{version}: {why}")

    def register(self, logged: LoggedModel) -> int:
        """A new version from a logged candidate (its run and model)."""
        # model_id: a tracking server refuses a models:/m-<id> source without it (a local store does not check).
        mv = self.client.create_model_version(self.name, logged.model_uri, run_id=logged.run_id,
                                              model_id=logged.model_id)
        return int(mv.version)

    def source(self, version: int) -> str:
        return self.info(version).source

    def description(self, version: int) -> str:
        return self.client.get_model_version(self.name, str(version)).description or ""

    # ---- writes -------------------------------------------------------------------------------

    def set_tags(self, version: int, tags: dict[str, Any]) -> None:
        """A few tags a person filters on in MLflow's versions table stay tags of their own
        (:data:`SHOWN`); the rest go into one JSON tag, ``driftline.details`` (a row of ~25 tags was
        ~550 px tall). :meth:`VersionInfo.tag` reads either."""
        texts = {key: ("" if value is None else str(value)) for key, value in tags.items()}
        hidden = {key: text for key, text in texts.items() if not shown(key)}
        for key, text in texts.items():
            if shown(key):
                self.client.set_model_version_tag(self.name, str(version), TAG + key, text[:_TAG_LIMIT])
        if hidden:
            current = self.client.get_model_version(self.name, str(version)).tags or {}
            merged = {**details(current), **hidden}
            self.client.set_model_version_tag(self.name, str(version), DETAILS, _fit_json(merged, _DETAILS_LIMIT))

    def describe(self, version: int, markdown: str) -> None:
        self.client.update_model_version(self.name, str(version), description=markdown)

    @_locked
    def mark_challenger(self, version: int, tags: dict[str, Any], *, run_id: str | None, actor: str | None) -> None:
        self.set_tags(version, {**tags, "verdict": "pending"})
        self.client.set_registered_model_alias(self.name, CHALLENGER, str(version))
        self.sync_stages()
        self._audit_once("registered", version, run_id=run_id, actor=actor, details=tags)

    @_locked
    def promote(
        self,
        version: int,
        *,
        run_id: str | None,
        actor: str | None,
        reasons: list[str],
        forced: bool = False,
        data_time: datetime | None = None,
        refit_of: int | None = None,
    ) -> dict[str, Any]:
        """Make ``version`` the champion. Order: an intent entry in the audit log (what was decided),
        point ``previous-champion`` at the old champion, move ``champion`` (one atomic write), then
        tag the winner, clear ``challenger``, mirror stages, and the completion entry. A crash
        anywhere leaves the old champion (or the new one) in place, and a re-run, or the next run's
        :meth:`unfinished_moves`, finishes the job.

        ``refit_of``: ``version`` is a refit of that blessed candidate (``promotion.refit``). It is
        ordered as the candidate (a champion registered after the candidate supersedes its refit
        too), and once the alias moved the candidate is tagged ``refitted`` with an audit entry
        naming the refit, so its page and the audit log say what became of it."""
        current = self.champion()
        intent = self._intent(INTENT_PROMOTE, version, run_id)
        decided = (intent or {}).get("details") or {}
        refit_of = decided.get("refit_of", refit_of)
        ordered = version if refit_of is None else int(refit_of)
        if current is not None and current != version and current > ordered:
            why = (f"superseded: v{current}, registered after v{ordered}, became champion before this "
                   f"promotion could be made")
            result = self.reject(version, run_id=run_id, actor=actor, reasons=[why])
            if refit_of is not None and self.info(int(refit_of)).tag("verdict") == "pending":
                self.reject(int(refit_of), run_id=run_id, actor=actor, reasons=[why])
            return {**result, "previous_champion": self.version_for(PREVIOUS), "superseded_by": current}
        if current != version:
            # The intent first: a move that dies half-way is visible in the audit log and the next run
            # finishes it (resume_moves), with what was decided (reasons, force, the version replaced).
            if intent is None:
                details = {"replacing": current, "reasons": reasons, "forced": forced, "data_time": _iso(data_time)}
                if refit_of is not None:
                    details["refit_of"] = refit_of
                self._audit_once(INTENT_PROMOTE, version, run_id=run_id, actor=actor, details=details)
                intent = self._intent(INTENT_PROMOTE, version, run_id)
            checkpoint("promote:intended")
            if current is not None:
                self.client.set_registered_model_alias(self.name, PREVIOUS, str(current))
            checkpoint("promote:previous_set")
            self.client.set_registered_model_alias(self.name, CHAMPION, str(version))
            checkpoint("promote:champion_moved")
        # Tags only once the alias moved: a version never reads "promoted" without having been champion.
        decided = (intent or {}).get("details") or {}
        replaced = decided.get("replacing", current if current != version else None)
        if intent is None and current == version:  # promoted before intents existed: keep its tags
            previous_tag = self.info(version).tag("previous_champion")
            replaced = int(previous_tag) if previous_tag else None
        self.set_tags(
            version,
            {
                "verdict": "promoted",
                "promoted_reasons": "; ".join(decided.get("reasons", reasons)),
                "forced": str(decided.get("forced", forced)).lower(),
                "previous_champion": replaced if replaced is not None else "",
                "promoted_at": decided.get("data_time") or _iso(data_time),
                "promoted_by_run": run_id,
            },
        )
        checkpoint("promote:tagged")
        if refit_of is not None:
            blessed = int(refit_of)
            self.set_tags(blessed, {"verdict": REFITTED, "refit_version": version})
            self._clear_challenger(blessed)
            self._audit_once(REFITTED, blessed, run_id=run_id, actor=actor, details={"refit_version": version})
        self._clear_challenger(version)
        checkpoint("promote:challenger_cleared")
        self.sync_stages()
        checkpoint("promote:stages_synced")
        details = {"previous_champion": replaced, "reasons": list(decided.get("reasons", reasons)),
                   "forced": decided.get("forced", forced)}
        if refit_of is not None:
            details["refit_of"] = refit_of
        self._audit_once("promoted", version, run_id=run_id, actor=actor, details=details)
        out = {"action": "promoted", "champion": version, "previous_champion": replaced}
        return out if refit_of is None else {**out, "refit_of": int(refit_of)}

    @_locked
    def reject(self, version: int, *, run_id: str | None, actor: str | None, reasons: list[str],
               canary: dict[str, Any] | None = None) -> dict[str, Any]:
        """The champion stays; the candidate is tagged rejected and archived. ``canary``: the candidate
        was answering a share of live requests (``serving.canary_fraction``; what the gate judged:
        ``rows`` it answered of ``paired_rows``); the rejection aborts that canary, which is tagged
        (``canary: aborted``) and written as a ``canary_aborted`` audit entry before ``rejected``.
        The verdict tag goes first: a serving process stops answering with a challenger whose
        verdict is no longer ``pending`` at its next poll."""
        if self.champion() == version:
            raise RegistryError(f"{self.name} v{version} is the champion; it cannot be rejected")
        tags: dict[str, Any] = {"verdict": "rejected", "rejected_reasons": "; ".join(reasons)}
        if canary is not None:
            tags.update(canary="aborted", canary_rows=canary.get("rows"))
        self.set_tags(version, tags)
        checkpoint("reject:tagged")
        self._clear_challenger(version)
        self.sync_stages()
        if canary is not None:
            self._audit_once("canary_aborted", version, run_id=run_id, actor=actor,
                             details={**canary, "reasons": reasons})
        self._audit_once("rejected", version, run_id=run_id, actor=actor, details={"reasons": reasons})
        out: dict[str, Any] = {"action": "rejected", "champion": self.champion(), "rejected": version}
        if canary is not None:
            out["canary"] = {**canary, "action": "aborted"}
        return out

    def resolve_rollback_target(self, target: str | int) -> int:
        """``"previous"`` -> the version before the champion; a number -> that version, checked."""
        champion = self.champion()
        if champion is None:
            raise RegistryError(f"{self.name} has no champion; nothing to roll back")
        if str(target).strip().lower() in ("previous", PREVIOUS):
            previous = self.version_for(PREVIOUS)
            if previous is None:
                previous_tag = self.info(champion).tag("previous_champion")
                previous = int(previous_tag) if previous_tag else None
            if previous is None:
                raise RegistryError(f"{self.name} v{champion} has no previous champion to roll back to")
            return previous
        try:
            version = int(str(target).strip().removeprefix("v"))
        except ValueError:
            raise RegistryError(f"rollback target must be 'previous' or a version number, got {target!r}") from None
        known = {v.version for v in self.versions()}
        if version not in known:
            raise RegistryError(f"{self.name} has no version {version} (versions: {sorted(known)})")
        return version

    @_locked
    def rollback(
        self, to_version: int, *, run_id: str | None, actor: str | None, reason: str, automatic: bool = False
    ) -> dict[str, Any]:
        """Give the champion alias back to ``to_version``. Order: an intent entry (naming the version
        it demotes), move ``champion`` (atomic), tag the demoted champion, point
        ``previous-champion`` at the demoted one (so it can be undone), mirror stages, the completion
        entry. The target is an explicit version so a retried task cannot roll back twice."""
        current = self.champion()
        if current is None:
            raise RegistryError(f"{self.name} has no champion; nothing to roll back")
        intent = self._intent(INTENT_ROLLBACK, to_version, run_id)
        if current != to_version:
            if intent is None:
                details = {"demoting": current, "reason": reason, "automatic": automatic}
                self._audit_once(INTENT_ROLLBACK, to_version, run_id=run_id, actor=actor, details=details)
                intent = self._intent(INTENT_ROLLBACK, to_version, run_id)
            checkpoint("rollback:intended")
            self.client.set_registered_model_alias(self.name, CHAMPION, str(to_version))
            checkpoint("rollback:champion_moved")
        # The demoted version is named by the intent (a re-run finds the alias already moved).
        demoted = ((intent or {}).get("details") or {}).get("demoting")
        if demoted is None and current != to_version:
            demoted = current
        if demoted is not None:
            self.set_tags(
                demoted,
                {
                    "verdict": "rolled_back",
                    "rolled_back_by": actor or "",
                    "rolled_back_reason": reason,
                    "rolled_back_to": to_version,
                    "rolled_back_automatically": str(automatic).lower(),
                    "rolled_back_by_run": run_id,
                },
            )
            checkpoint("rollback:tagged")
        if demoted is not None:
            # Also on a re-run: the first attempt may have crashed before tagging the restored version.
            self.set_tags(to_version, {"verdict": "promoted", "restored_by_run": run_id})
        # "Roll back to previous" must undo this move, so previous-champion names the version just
        # demoted. The guard never restores a rolled-back version by itself (loop.guard_champion):
        # only a person can, so a person's rollback is not undone behind their back.
        if demoted is not None:
            self.client.set_registered_model_alias(self.name, PREVIOUS, str(demoted))
        elif self.version_for(PREVIOUS) == to_version:
            self.client.delete_registered_model_alias(self.name, PREVIOUS)
        checkpoint("rollback:previous_set")
        self._clear_challenger(to_version)  # the restored champion is no longer under evaluation
        self.sync_stages()
        details = {"from_version": demoted, "reason": reason, "automatic": automatic}
        self._audit_once("rolled_back", to_version, run_id=run_id, actor=actor, details=details)
        return {"action": "rolled_back", "champion": to_version, "from_version": demoted}

    def sync_stages(self) -> None:
        """Derive the legacy stages from the aliases (idempotent)."""
        holders = {alias: self.version_for(alias) for alias in STAGE_FOR_ALIAS}
        wanted: dict[int, str] = {}
        for alias, version in holders.items():  # champion first: it outranks challenger on the same version
            if version is not None:
                wanted.setdefault(version, STAGE_FOR_ALIAS[alias])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated; we mirror on purpose
            for info in self.versions():
                target = wanted.get(info.version)
                if target is None and info.stage in ("Production", "Staging"):
                    target = "Archived"
                if target is not None and info.stage != target:
                    self.client.transition_model_version_stage(
                        self.name, str(info.version), target, archive_existing_versions=False
                    )

    # ---- helpers ------------------------------------------------------------------------------

    def _intent(self, action: str, version: int, run_id: str | None) -> dict[str, Any] | None:
        if run_id is None:
            return None
        return next((e for e in self.store.audit_log(self.name, [action])
                     if e["run_id"] == run_id and e["version"] == version), None)

    def unfinished_moves(self) -> list[dict[str, Any]]:
        """Intent entries whose move has no completion entry (same run, same version): moves a crash
        or a failed write left half-done, oldest first."""
        done = {(e["action"], e["run_id"], e["version"])
                for e in self.store.audit_log(self.name, [*COMPLETIONS, ABANDONED])}
        out = []
        for entry in self.store.audit_log(self.name, [INTENT_PROMOTE, INTENT_ROLLBACK]):
            finished = ("promoted", "rejected") if entry["action"] == INTENT_PROMOTE else ("rolled_back",)
            if not any((action, entry["run_id"], entry["version"]) in done for action in (*finished, ABANDONED)):
                out.append(entry)
        return out

    def finish(self, intent: dict[str, Any]) -> dict[str, Any]:
        """Finish a move :meth:`unfinished_moves` found, as its own run decided it; or, when the alias
        never moved and a later move has completed since (a person rolled back meanwhile), record it
        as abandoned rather than undo what came after."""
        d = intent["details"] or {}
        version, run_id = intent["version"], intent["run_id"]
        later = [e for e in self.store.audit_log(self.name, list(COMPLETIONS)) if e["id"] > intent["id"]]
        if later and self.champion() != version:
            why = f"{later[-1]['action']} v{later[-1]['version']} came after it; not resumed"
            self._audit_once(ABANDONED, version, run_id=run_id, actor=intent["actor"],
                             details={"intent": intent["action"], "why": why})
            return {"action": "abandoned", "version": version, "run_id": run_id, "why": why}
        if intent["action"] == INTENT_PROMOTE:
            data_time = datetime.fromisoformat(d["data_time"]) if d.get("data_time") else None
            return self.promote(version, run_id=run_id, actor=intent["actor"], reasons=list(d.get("reasons", [])),
                                forced=bool(d.get("forced")), data_time=data_time, refit_of=d.get("refit_of"))
        return self.rollback(version, run_id=run_id, actor=intent["actor"], reason=d.get("reason", ""),
                             automatic=bool(d.get("automatic")))

    def _clear_challenger(self, version: int) -> None:
        if self.version_for(CHALLENGER) == version:
            self.client.delete_registered_model_alias(self.name, CHALLENGER)

    def _audit_once(
        self, action: str, version: int, *, run_id: str | None, actor: str | None, details: dict[str, Any]
    ) -> None:
        """A re-run of the same move by the same run writes no second entry."""
        if run_id is not None:
            for entry in self.store.audit_log(self.name, [action]):
                if entry["run_id"] == run_id and entry["version"] == version:
                    return
        self.store.audit(self.name, action, version=version, actor=actor, run_id=run_id, details=details)


def _iso(value: datetime | None) -> str:
    return (value or datetime.now(UTC)).isoformat()
