"""``driftline serve``: a real uvicorn server process (``python -m driftline.cli serve``) on a free loopback
port, a real MLflow SQLite registry and a real store under a temp DRIFTLINE_HOME. The champion alias is
moved with the real ``Registry`` while a bounded client loop sends requests.

Each server start costs a few seconds (imports, first model load), so each test starts one or two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest

from ml import tracking
from ml.registry import CHAMPION, Registry
from ml.settings import get_settings
from ml.simulator import CreditDefaultSimulator
from ml.store import Store
from ml.training import fit_full, predict

ROOT = Path(__file__).resolve().parent.parent
POLL = 1.0  # the server's alias poll in these tests (default 2 s)


# ---- registry with real versions ------------------------------------------------------------------


def _labelled(sim: CreditDefaultSimulator, periods: list[int]) -> pd.DataFrame:
    frames = []
    for period in periods:
        batch = sim.batch(period)
        frames.append(batch.features.merge(batch.labels[["row_id", "label"]], on="row_id"))
    return pd.concat(frames, ignore_index=True)


@dataclass
class World:
    config: object
    registry: Registry
    models: dict[int, object]  # version -> the fitted pipeline logged as that version
    rows: pd.DataFrame  # feature rows to send


def _log_version(name: str, model: object, data: pd.DataFrame) -> int:
    tracking.client()
    experiment = tracking.ensure_experiment(name)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                        serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    version = int(info.registered_model_version)
    settings = get_settings()
    registry = Registry(name, Store(settings.store_url), tracking.client(settings))
    registry.set_tags(version, {"data_start": data["ts"].min().isoformat(), "data_end": data["ts"].max().isoformat()})
    # What train_candidate's registration leaves in the audit log, which a registry that checks lineage
    # before a load (Registry.check_blessed) looks for.
    registry.store.audit(name, "registered", version=version,
                         details={"mlflow_run_id": run.info.run_id, "model_source": registry.info(version).source})
    return version


def _promote(registry: Registry, version: int) -> None:
    registry.promote(version, run_id=f"promote-v{version}", actor="test", reasons=["test"])


@pytest.fixture
def world(home, config) -> World:
    return _world(config)


def _world(config) -> World:
    """v1 (champion), v2 and v3 registered; each learned a different window, so their scores differ.
    The registry's store (locks, audit log) is the model's store, as the server's is."""
    sim = CreditDefaultSimulator(seed=0, rows_per_period=150)
    models = {}
    for periods in ([0, 1], [2, 3], [4, 5]):
        data = _labelled(sim, periods)
        model = fit_full(config, data)
        models[_log_version(config.name, model, data)] = model
    settings = get_settings()
    registry = Registry(config.name, Store(settings.store_url), tracking.client(settings))
    _promote(registry, 1)
    rows = CreditDefaultSimulator(seed=7, rows_per_period=400).batch(0).features
    return World(config, registry, models, rows)


# ---- the server process ---------------------------------------------------------------------------


class Server:
    def __init__(self, tmp: Path, *, env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        from driftline.stack import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"serve-{self.port}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.cli", "serve", "credit_default", "--port", str(self.port),
             "--poll-seconds", str(POLL), *(args or [])],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a failed test's teardown kills --workers' children too
        )
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def wait_ready(self, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}:\n{self.log()}"
            try:
                answer = self.client.get("/health")
                if answer.status_code == 200:
                    return answer.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not healthy after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a process manager stops it; returns 0 if the shutdown ran to its end (uvicorn
        re-raises the signal after a graceful shutdown, so the exit status itself is -SIGTERM)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        self.client.close()
        self._log.close()
        graceful = "driftline.serve: stopped:" in self.log() and "Application shutdown complete" in self.log()
        return 0 if self.proc.returncode in (0, -signal.SIGTERM) and graceful else (self.proc.returncode or 1)

    def log(self) -> str:
        return self.log_path.read_text()[-6000:]


@pytest.fixture
def servers(tmp_path):
    started: list[Server] = []

    def start(**kwargs) -> Server:
        server = Server(tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        try:  # the whole group: a SIGKILLed uvicorn supervisor leaves its workers running otherwise
            os.killpg(server.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.proc.wait(10)


# ---- a bounded client loop ------------------------------------------------------------------------


@dataclass
class Traffic:
    """Threads that each send requests of ``rows_per_request`` rows one after another, ``interval``
    apart, until stopped (or ``max_seconds`` / ``max_requests`` pass: the loop is bounded whatever the
    test does). Paced, because unpaced the fast path answered the whole budget before a swap began."""

    url: str
    rows: pd.DataFrame
    threads: int = 4
    rows_per_request: int = 3
    max_seconds: float = 60
    max_requests: int = 12000
    interval: float = 0.01
    prefix: str = "t"
    answers: list[dict] = field(default_factory=list)  # {"thread", "sent", "done", "status", "body", "keys"}
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Traffic:
        for t in range(self.threads):
            worker = threading.Thread(target=self._run, args=(t,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, t: int) -> None:
        features = self.rows.drop(columns=["row_id", "ts"]).to_dict("records")
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=30) as client:
            n = 0
            while not self._stop.is_set() and time.monotonic() < deadline and n < self.max_requests // self.threads:
                picked = [(f"{self.prefix}{t}-{n}-{j}", features[(t * 997 + n * 7 + j) % len(features)])
                          for j in range(self.rows_per_request)]
                body = {"rows": [{"key": key, **values} for key, values in picked]}
                sent = time.monotonic()
                try:
                    response = client.post("/predict", json=body)
                    status, answer = response.status_code, response.json()
                except httpx.HTTPError as exc:
                    status, answer = None, repr(exc)
                with self._lock:
                    self.answers.append({"thread": t, "sent": sent, "done": time.monotonic(), "status": status,
                                         "body": answer, "rows": picked})
                n += 1
                self._stop.wait(self.interval)

    def stop(self) -> list[dict]:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)
        return self.answers


def _answered_rows(answers: list[dict]) -> dict[str, dict]:
    """key -> {"version", "prediction", "score", "features"} for every row a 200 answered."""
    rows = {}
    for a in answers:
        for (key, values), p in zip(a["rows"], a["body"]["predictions"], strict=True):
            assert p["key"] == key
            rows[key] = {"version": a["body"]["version"], "prediction": p["prediction"], "score": p["score"],
                         "features": values}
    return rows


def _stored(store: Store, config) -> pd.DataFrame:
    return store.load(config.name, config.feature_names).set_index("row_id")


def _wait_stored(store: Store, config, count: int, timeout: float = 30) -> pd.DataFrame:
    deadline = time.monotonic() + timeout
    while True:
        stored = _stored(store, config)
        if len(stored) >= count or time.monotonic() > deadline:
            return stored
        time.sleep(0.3)


def _check_stored(world: World, stored: pd.DataFrame, answered: dict[str, dict]) -> None:
    """Every answered row stored once, under the version that answered it, with its answer, ts set; and
    that version's own model gives that score (the version label is the truth, not just consistent)."""
    assert sorted(stored.index) == sorted(answered), (
        f"missing {sorted(set(answered) - set(stored.index))[:5]}, extra {sorted(set(stored.index) - set(answered))[:5]}"
    )
    stored = stored.loc[list(answered)]
    versions = [answered[k]["version"] for k in answered]
    assert stored["model_version"].tolist() == versions
    np.testing.assert_allclose(stored["score"].to_numpy(float), [answered[k]["score"] for k in answered], rtol=1e-9)
    assert stored["prediction"].tolist() == [answered[k]["prediction"] for k in answered]
    assert stored["ts"].notna().all()
    for version in set(versions):
        keys = [k for k in answered if answered[k]["version"] == version]
        frame = pd.DataFrame([answered[k]["features"] for k in keys])
        expected_prediction, expected = predict(world.config, world.models[version], frame)
        np.testing.assert_allclose([answered[k]["score"] for k in keys], expected, rtol=1e-9)
        assert [answered[k]["prediction"] for k in keys] == expected_prediction.tolist()


# ---- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_hot_swap_under_load_zero_failures_and_every_row_stored_under_its_version(world, servers, workers):
    # With 2 uvicorn workers each process follows the alias and writes on its own.
    server = servers(args=["--workers", str(workers)])
    assert server.wait_ready()["version"] == 1
    deadline = time.monotonic() + 60
    while server.log().count("Application startup complete") < workers:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    described = server.client.get("/model").json()
    assert described["version"] == 1 and described["alias"] == CHAMPION
    assert described["trained_on"]["start"].startswith("2026-01-01")
    assert described["trained_on"]["end"].startswith("2026-01-02")

    traffic = Traffic(server.url, world.rows).start()
    time.sleep(1.5)
    promoted_at = time.monotonic()
    _promote(world.registry, 2)  # the real move: tags, previous-champion, champion alias, stages, audit
    deadline = promoted_at + 15
    while time.monotonic() < deadline and not any(
        a["status"] == 200 and a["body"]["version"] == 2 for a in list(traffic.answers)
    ):
        time.sleep(0.1)
    time.sleep(1.0)  # more traffic on the new version
    answers = traffic.stop()

    failures = [a for a in answers if a["status"] != 200]
    assert not failures, f"{len(failures)} of {len(answers)} requests failed, e.g. {failures[:2]}\n{server.log()}"
    v2 = [a["done"] for a in answers if a["body"]["version"] == 2]
    quiet_log = "\n".join(line for line in server.log().splitlines() if "POST /predict" not in line)
    assert v2, f"v2 never answered in {len(answers)} requests, last {answers[-1]}\n{quiet_log[-4000:]}"
    first_v2 = min(v2)
    swap_seconds = first_v2 - promoted_at
    assert swap_seconds < 3 * POLL + 5, f"took {swap_seconds:.1f} s to serve v2"
    # Per client thread, requests are sequential: once one is answered by v2, no later one is by v1.
    for t in range(traffic.threads):
        seen = [a["body"]["version"] for a in answers if a["thread"] == t]
        assert seen == sorted(seen) and set(seen) == {1, 2}, seen
    latencies = sorted(a["done"] - a["sent"] for a in answers)
    print(f"\n{workers} worker(s): {len(answers)} requests, swap seen after {swap_seconds:.2f} s, "
          f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")

    answered = _answered_rows(answers)
    stored = _wait_stored(world.registry.store, world.config, len(answered))
    _check_stored(world, stored, answered)
    assert server.client.get("/model").json()["version"] == 2
    assert server.stop() == 0


def test_only_a_promoted_version_is_served(world, servers):
    server = servers()
    assert server.wait_ready()["version"] == 1
    # v2 is only a challenger (verdict pending); someone points the champion alias at it by hand.
    world.registry.mark_challenger(2, {}, run_id="train-v2", actor="test")
    world.registry.client.set_registered_model_alias(world.config.name, CHAMPION, "2")
    time.sleep(3 * POLL + 1)
    described = server.client.get("/model").json()
    assert described["version"] == 1
    [refused] = described["follower"]["refused"]
    assert refused["version"] == 2 and "'pending'" in refused["reason"], refused
    answer = server.client.post("/predict", json={"rows": [_row(world, "after-refusal")]})
    assert answer.status_code == 200 and answer.json()["version"] == 1
    assert "not served" in server.log() and "v2" in server.log()

    # Driftline promotes v3 over it: tags, audit entry, alias; served within a few polls.
    _promote(world.registry, 3)
    _wait_version(server, 3)
    assert server.client.get("/model").json()["follower"]["refused"] == []

    if hasattr(Registry, "check_blessed"):
        # A registry that checks its audit log: a verdict tag set by hand through MLflow does not bless.
        world.registry.set_tags(2, {"verdict": "promoted"})
        world.registry.client.set_registered_model_alias(world.config.name, CHAMPION, "2")
        time.sleep(3 * POLL + 1)
        described = server.client.get("/model").json()
        assert described["version"] == 3
        [refused] = described["follower"]["refused"]
        assert refused["version"] == 2 and "never promoted" in refused["reason"], refused


def _wait_version(server: Server, version: int, timeout: float = 3 * POLL + 10) -> None:
    deadline = time.monotonic() + timeout
    while server.client.get("/model").json()["version"] != version and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.client.get("/model").json()["version"] == version, server.log()


def test_nothing_blessed_at_start_answers_503_until_a_promoted_version_appears(world, servers):
    # The alias names a version that was never promoted: the service starts, but serves nothing.
    world.registry.mark_challenger(2, {}, run_id="train-v2", actor="test")
    world.registry.client.set_registered_model_alias(world.config.name, CHAMPION, "2")
    server = servers()
    deadline = time.monotonic() + 90
    while True:
        try:
            health = server.client.get("/health")
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline and server.proc.poll() is None, server.log()
            time.sleep(0.2)
    assert health.status_code == 503 and health.json()["version"] is None
    answer = server.client.post("/predict", json={"rows": [_row(world, "too-early")]})
    assert answer.status_code == 503 and "no blessed" in answer.json()["detail"]
    # The alias is put back on v1, which Driftline promoted.
    world.registry.client.set_registered_model_alias(world.config.name, CHAMPION, "1")
    assert server.wait_ready(timeout=3 * POLL + 10)["version"] == 1
    answer = server.client.post("/predict", json={"rows": [_row(world, "in-time")]})
    assert answer.status_code == 200 and answer.json()["version"] == 1
    assert server.stop() == 0
    assert list(_stored(world.registry.store, world.config).index) == ["in-time"]


def _row(world: World, key: str, **override) -> dict:
    values = world.rows.drop(columns=["row_id", "ts"]).iloc[0].to_dict()
    return {"key": key, **{k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}, **override}


def test_bad_bodies_get_422_naming_the_field_and_store_nothing(world, servers):
    server = servers()
    server.wait_ready()
    good = _row(world, "fine")
    no_income = {k: v for k, v in _row(world, "no-income").items() if k != "income"}
    cases = [
        # (body, expected loc, words in msg)
        ({"rows": [no_income]}, ["body", "rows", 0, "income"], "field required"),
        ({"rows": [good, _row(world, "bad-type", age="forty")]}, ["body", "rows", 1, "age"], "expected a number"),
        ({"rows": [_row(world, "bool", age=True)]}, ["body", "rows", 0, "age"], "expected a number"),
        ({"rows": [_row(world, "cat", home_ownership=3.5)]}, ["body", "rows", 0, "home_ownership"], "expected a string"),
        ({"rows": [_row(world, "no-key") | {"key": ""}]}, ["body", "rows", 0, "key"], "non-empty string"),
        ({"rows": [{k: v for k, v in good.items() if k != "key"}]}, ["body", "rows", 0, "key"], "field required"),
        ({"rows": [good, good]}, ["body", "rows", 1, "key"], "duplicate"),
        ({"rows": [_row(world, "extra", incme=1.0)]}, ["body", "rows", 0, "incme"], "unknown field"),
        ({"rows": []}, ["body", "rows"], "empty"),
        ({"records": [good]}, ["body", "records"], "unknown field"),
        ([good], ["body"], "expected a JSON object"),
    ]
    for body, loc, words in cases:
        answer = server.client.post("/predict", json=body)
        assert answer.status_code == 422, (body, answer.text)
        locs = {tuple(e["loc"]): e["msg"] for e in answer.json()["detail"]}
        assert tuple(loc) in locs, (loc, answer.json())
        assert words in locs[tuple(loc)], (words, locs)
    # Non-finite numbers only reach us as JSON's NaN / Infinity extensions (or an overflowing literal).
    raw = json.dumps({"rows": [good]})
    for token in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = raw.replace(f'"income": {json.dumps(good["income"])}', f'"income": {token}')
        assert token in body
        answer = server.client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422, (token, answer.text)
        [error] = answer.json()["detail"]
        assert error["loc"] == ["body", "rows", 0, "income"] and "finite" in error["msg"], error
    answer = server.client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 422 and answer.json()["detail"][0]["type"] == "json_invalid"

    # One good request after all of that; once it is stored, the writer has passed every bad one.
    answer = server.client.post("/predict", json={"rows": [good]})
    assert answer.status_code == 200, answer.text
    stored = _wait_stored(world.registry.store, world.config, 1)
    # The same key again (a client's retry), then with other features: answered, but the first row and
    # its prediction stay stored (the row is a fact), and the second is reported as a conflict.
    assert server.client.post("/predict", json={"rows": [good]}).status_code == 200
    assert server.client.post("/predict", json={"rows": [good | {"income": 1.0}]}).status_code == 200
    writer = _health_until(server, lambda w: w["duplicates"] == 2, timeout=10)["writer"]
    assert (writer["written"], writer["duplicates"], writer["conflicts"]) == (1, 2, 1), writer
    assert server.stop() == 0
    assert "sent again with other features" in server.log()
    after = _stored(world.registry.store, world.config)
    assert list(after.index) == ["fine"]
    assert stored.loc["fine", "model_version"] == 1
    assert after.loc["fine", "income"] == good["income"] and after.loc["fine", "ts"] == stored.loc["fine", "ts"]


def test_sigterm_flushes_what_is_queued(world, servers):
    # A 60 s flush interval: only the shutdown flush can write these before the process exits.
    server = servers(args=["--flush-seconds", "60"])
    server.wait_ready()
    answers = []
    for i in range(20):
        rows = [_row(world, f"sigterm-{i}-{j}") for j in range(5)]
        answer = server.client.post("/predict", json={"rows": rows})
        assert answer.status_code == 200
        answers.append(answer.json())
    assert server.client.get("/health").json()["writer"]["queued"] == 100
    assert _stored(world.registry.store, world.config).empty
    assert server.stop() == 0
    stored = _stored(world.registry.store, world.config)
    assert len(stored) == 100 and (stored["model_version"] == 1).all()


# ---- the store goes away during traffic (PostgreSQL) ----------------------------------------------


def _pg_admin():
    import sqlalchemy as sa
    from conftest import PG_URL

    return sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")


def _store_down(admin, database: str) -> None:
    """No new connections to the database, and the open ones cut: what the service sees when the
    database server is unreachable. Nothing stored is lost, unlike dropping the database."""
    import sqlalchemy as sa

    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database})


def _store_up(admin, database: str) -> None:
    import sqlalchemy as sa

    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))


def _health_until(server: Server, check, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = server.client.get("/health").json()
        if check(health["writer"]) or time.monotonic() > deadline:
            return health
        time.sleep(0.2)


@pytest.fixture
def pg_world(home, config, pg_url, monkeypatch) -> World:
    """The world with its store (rows, audit log, locks) on PostgreSQL, as in production."""
    monkeypatch.setenv("DRIFTLINE_STORE_URL", pg_url)
    return _world(config)


@pytest.mark.postgres
def test_store_outage_loses_nothing_even_across_a_restart(pg_world, servers, pg_url, home):
    world = pg_world
    database = pg_url.rsplit("/", 1)[1]
    admin = _pg_admin()
    env = {"DRIFTLINE_STORE_URL": pg_url}
    try:
        server = servers(env=env)
        server.wait_ready()
        traffic = Traffic(server.url, world.rows, threads=2, prefix="a").start()
        time.sleep(1.0)
        _store_down(admin, database)
        down = _health_until(server, lambda w: not w["store_ok"] and w["spooled"] > 0, timeout=15)
        assert not down["writer"]["store_ok"] and down["writer"]["spooled"] > 0, down
        time.sleep(1.5)  # answers keep coming while the store is away
        _store_up(admin, database)
        up = _health_until(server, lambda w: w["store_ok"] and w["spooled"] == 0, timeout=30)
        assert up["writer"]["store_ok"] and up["writer"]["spooled"] == 0, (up, server.log())
        answers = traffic.stop()
        assert all(a["status"] == 200 for a in answers), [a for a in answers if a["status"] != 200][:2]
        spooled_at_peak = down["writer"]["spooled"]

        # Down again, and the service is stopped before the store comes back: the spool stays on disk
        # and the next process writes it.
        _store_down(admin, database)
        late = []
        for i in range(10):
            rows = [_row(world, f"late-{i}-{j}") for j in range(4)]
            answer = server.client.post("/predict", json={"rows": rows})
            assert answer.status_code == 200
            late.append({"status": 200, "body": answer.json(),
                         "rows": [(r["key"], {k: v for k, v in r.items() if k != "key"}) for r in rows]})
        _health_until(server, lambda w: w["queued"] == 0 and w["spooled"] >= 40, timeout=15)
        assert server.stop() == 0
        spools = [p for p in (home / "serving" / "spool").glob("credit_default.*.jsonl") if p.stat().st_size]
        assert len(spools) == 1 and sum(len(json.loads(line)) for line in spools[0].open()) >= 40
        _store_up(admin, database)

        server = servers(env=env)
        server.wait_ready()
        answered = _answered_rows(answers + late)
        stored = _wait_stored(Store(pg_url), world.config, len(answered))
        _check_stored(world, stored, answered)
        assert _health_until(server, lambda w: w["spooled"] == 0, timeout=10)["writer"]["spooled"] == 0
        assert not [p for p in (home / "serving" / "spool").glob("credit_default.*.jsonl") if p.stat().st_size]
        print(f"\n{len(answers)} requests during the outage test, {spooled_at_peak}+ rows spooled, all stored")
        assert server.stop() == 0
    finally:
        _store_up(admin, database)
        admin.dispose()


# ---- the spool on its own: what a crash can leave behind -------------------------------------------


def test_a_spool_left_by_a_crash_is_written_and_what_cannot_be_is_set_aside(home, config):
    """A process killed mid-append leaves a cut line; a batch the store refuses (here a version that is
    not a number) must not hold back the ones after it. Both are kept in the rejected file."""
    from ml.serving import PredictionWriter

    rows = CreditDefaultSimulator(seed=3, rows_per_period=6).batch(0).features
    features = rows.drop(columns=["row_id", "ts"]).to_dict("records")

    def batch(keys: range, version: object) -> list[dict]:
        return [{"row_id": f"k{i}", "ts": "2026-11-30T12:00:00+00:00", "features": features[i], "prediction": 0,
                 "score": 0.25, "model_version": version} for i in keys]

    folder = home / "serving" / "spool"
    folder.mkdir(parents=True)
    lines = [json.dumps(batch(range(2), 1)), json.dumps(batch(range(2, 3), "not-a-version")),
             json.dumps(batch(range(3, 5), 2)), json.dumps(batch(range(5, 6), 2))[:40]]
    (folder / f"{config.name}.999-deadbeef.jsonl").write_text("\n".join(lines))  # no newline: cut short

    store = Store(get_settings().store_url)
    writer = PredictionWriter(store.url, config.name, folder, flush_seconds=0.05, retry_seconds=0.05)
    writer.start()
    deadline = time.monotonic() + 30
    while writer.stats.spooled and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    stored = _stored(store, config)
    assert sorted(stored.index) == ["k0", "k1", "k3", "k4"]
    assert stored["model_version"].tolist() == [1, 1, 2, 2]
    rejected = [json.loads(line) for line in (folder / f"{config.name}.rejected.jsonl").read_text().splitlines()]
    by_why = {("JSON" if "not valid JSON" in r["why"] else r["why"].split(":")[0]): r["batch"] for r in rejected}
    assert sorted(by_why) == ["JSON", "ValueError"], rejected
    assert by_why["JSON"] == lines[3] and json.loads(by_why["ValueError"])[0]["row_id"] == "k2"
    assert not [p for p in folder.glob(f"{config.name}.*.jsonl") if "rejected" not in p.name and p.stat().st_size]


# ---- MLflow registry webhooks ---------------------------------------------------------------------


def _sign(secret: str, body: bytes, stamp: int | None = None, delivery: str = "d-1") -> dict[str, str]:
    """Headers as MLflow's own delivery code makes them (its signing function, not a copy of it)."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    stamp = int(time.time()) if stamp is None else stamp
    return {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": str(stamp), "content-type": "application/json",
            "X-MLflow-Signature": _generate_hmac_signature(secret, delivery, str(stamp), body.decode())}


def test_webhook_signature_is_mlflows_and_anything_else_is_refused():
    from ml.serving import WebhookRejected, verify_webhook

    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": "m", "alias": "champion", "version": "2"}}).encode()
    now = time.time()
    verify_webhook("s3cret", _sign("s3cret", body), body, tolerance_seconds=300, now=now)
    for headers, payload, why in [
        (_sign("other", body), body, "does not match"),
        (_sign("s3cret", body), body.replace(b'"2"', b'"3"'), "does not match"),  # body changed after signing
        (_sign("s3cret", body, stamp=int(now) - 301), body, "tolerance"),  # replayed later
        ({k: v for k, v in _sign("s3cret", body).items() if k != "X-MLflow-Signature"}, body, "missing"),
        (_sign("s3cret", body) | {"X-MLflow-Timestamp": "soon"}, body, "not a unix time"),
    ]:
        with pytest.raises(WebhookRejected, match=why):
            verify_webhook("s3cret", headers, payload, tolerance_seconds=300, now=now)


@pytest.fixture
def mlflow_server(home, monkeypatch, tmp_path):
    """``mlflow server`` over SQLite (the stack's own command line) that may call loopback URLs, its
    webhook list re-read every second (default 60 s: a webhook registered after an event of its kind
    would otherwise wait a minute). The test process and the servers it starts talk to it over HTTP."""
    from cryptography.fernet import Fernet

    from driftline.stack import MLFLOW_SERVER_ENV, free_port, mlflow_server_command

    port = free_port()
    settings = get_settings()
    env = {**os.environ, **MLFLOW_SERVER_ENV, "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
           "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_CACHE_TTL": "1",
           "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    log_path = tmp_path / "mlflow.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(mlflow_server_command(settings, port), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine takes minutes to import MLflow
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.integration
def test_webhook_moves_the_service_at_once_and_a_forged_one_gets_401(mlflow_server, config, servers):
    world = _world(config)  # registered and promoted through the MLflow server
    secret = "whsec-test-0123456789"
    # Polling every 10 minutes: only the webhook can bring v2 within the test.
    server = servers(env={"DRIFTLINE_SERVE_WEBHOOK_SECRET": secret},
                     args=["--poll-seconds", "600", "--webhook-poll-seconds", "600"])
    assert server.wait_ready()["version"] == 1
    described = server.client.get("/model").json()
    webhook_id = described["webhook"]["registered"]
    assert webhook_id and described["follower"]["poll_seconds"] == 600, (described, server.log())
    [hook] = [h for h in world.registry.client.list_webhooks() if h.webhook_id == webhook_id]
    assert hook.url == f"{server.url}/webhooks/mlflow"
    assert sorted(str(e) for e in hook.events) == ["model_version_alias.created", "model_version_tag.set"]

    # Forged or stale deliveries: 401, and nothing is checked.
    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": config.name, "alias": CHAMPION, "version": "3"}}).encode()
    for headers in (_sign("not-the-secret", body), _sign(secret, body, stamp=int(time.time()) - 3600),
                    {"content-type": "application/json"}):
        answer = server.client.post("/webhooks/mlflow", content=body, headers=headers)
        assert answer.status_code == 401, answer.text
    # Signed with the right secret but naming v3: it only makes the service re-read the alias (still v1).
    answer = server.client.post("/webhooks/mlflow", content=body, headers=_sign(secret, body))
    assert answer.status_code == 202 and answer.json()["status"] == "checking"
    time.sleep(1.0)
    described = server.client.get("/model").json()
    assert described["version"] == 1 and described["follower"]["webhook_wakes"] == 1, described

    moved_at = time.monotonic()
    _promote(world.registry, 2)  # through the MLflow server: it posts alias.created, then the verdict tag
    promoted_in = time.monotonic() - moved_at
    deadline = moved_at + 20
    while True:
        answer = server.client.post("/predict", json={"rows": [_row(world, f"after-{time.monotonic()}")]})
        assert answer.status_code == 200, answer.text
        if answer.json()["version"] == 2:
            break
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    seconds = time.monotonic() - moved_at
    print(f"\npromote() began -> first answer by v2 after {seconds:.2f} s (promote() itself took "
          f"{promoted_in:.2f} s; poll 600 s)")
    assert server.client.get("/model").json()["follower"]["webhook_wakes"] >= 2
    assert "webhook refused (401)" in server.log()

    assert server.stop() == 0
    assert webhook_id not in [h.webhook_id for h in world.registry.client.list_webhooks()]


# ---- the NumPy fast path ---------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", [
    {"class": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.5, "max_iter": 300}},
    {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 5, "max_depth": 3}},
    {"class": "sklearn.ensemble.HistGradientBoostingClassifier", "params": {"max_iter": 10}},
])
def test_fast_path_gives_the_pipelines_numbers_or_is_not_used(home, estimator):
    """Same predictions and scores as ``ml.training.predict`` on rows with nulls and unseen categories;
    a pipeline it does not know (native categorical encoding) is scored by the pipeline itself."""
    import yaml

    from ml.config import load_config
    from ml.serving import (
        FastPipeline,
        ModelHolder,
        ScoringService,
        ServedModel,
        parse_records,
        records_frame,
    )

    raw = yaml.safe_load((ROOT / "models" / "credit_default.yaml").read_text())
    raw["estimator"] = estimator
    path = home / "credit_default.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    model = fit_full(config, _labelled(CreditDefaultSimulator(seed=0, rows_per_period=150), [0, 1]))
    fast = FastPipeline.compile(model, config)
    if "HistGradientBoosting" in estimator["class"]:
        assert fast is None
        return
    assert fast is not None
    features = CreditDefaultSimulator(seed=5, rows_per_period=200).batch(0).features
    rows = features.drop(columns=["row_id", "ts"]).to_dict("records")
    rows[0]["income"] = None
    rows[1]["employment_type"] = None
    rows[2]["home_ownership"] = "houseboat"  # never seen in training
    records = parse_records({"rows": [{"key": f"k{i}", **r} for i, r in enumerate(rows)]}, config)
    expected_prediction, expected_score = predict(config, model, records_frame(records, config))
    served = ServedModel(name=config.name, version=1, alias=CHAMPION, model=model, loaded_at=None, data_start=None,
                         data_end=None, verdict="promoted", fast=fast)
    prediction, score = ScoringService(config, ModelHolder(), None)._predict_fast(served.fast, records)
    assert prediction.tolist() == expected_prediction.tolist()
    np.testing.assert_allclose(score, expected_score, rtol=1e-12, atol=1e-15)


def test_fast_path_refuses_a_pipeline_it_would_get_wrong(home, config):
    """A fitted step it does not model (here: scaling switched off after the fit) is caught by the probe
    comparison, not served with other numbers."""
    from ml.serving import FastPipeline

    model = fit_full(config, _labelled(CreditDefaultSimulator(seed=0, rows_per_period=150), [0, 1]))
    assert FastPipeline.compile(model, config) is not None
    scaler = model.named_steps["preprocess"].named_transformers_["num"].named_steps["scale"]
    fast = FastPipeline(model, config)
    scaler.scale_ = scaler.scale_ * 2  # the pipeline changes under the compiled copy
    assert "preprocessing" in fast._disagreement(config)


def _wait_shadow(server: Server, version: int | None, timeout: float = 3 * POLL + 10) -> None:
    deadline = time.monotonic() + timeout
    while server.client.get("/model").json()["shadow"]["challenger"] != version and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.client.get("/model").json()["shadow"]["challenger"] == version, server.log()


def test_shadow_scores_with_the_challenger_stores_beside_the_answer_and_never_returns_it(world, servers, tmp_path):
    import yaml

    raw = yaml.safe_load((ROOT / "models" / "credit_default.yaml").read_text())
    raw["serving"] = {"shadow": True}
    models = tmp_path / "models"
    models.mkdir()
    (models / "credit_default.yaml").write_text(yaml.safe_dump(raw))
    world.registry.mark_challenger(2, {}, run_id="train-v2", actor="test")  # registered by Driftline, pending
    server = servers(env={"DRIFTLINE_MODELS_DIR": str(models)})
    assert server.wait_ready()["version"] == 1
    _wait_shadow(server, 2)
    features = world.rows.drop(columns=["row_id", "ts"]).to_dict("records")
    answers, sent = [], {}
    for n in range(12):
        rows = [(f"s{n}-{j}", features[(n * 5 + j) % len(features)]) for j in range(5)]
        sent.update(rows)
        response = server.client.post("/predict", json={"rows": [{"key": k, **v} for k, v in rows]})
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"model", "version", "predictions"} and body["version"] == 1
        assert all(set(p) == {"key", "prediction", "score"} for p in body["predictions"])  # nothing of v2
        answers.append({"rows": rows, "body": body})

    # The challenger goes (rejected): shadow scoring stops, serving goes on.
    world.registry.reject(2, run_id="judge-v2", actor="test", reasons=["test"])
    _wait_shadow(server, None)
    after = _row(world, "after-reject")
    assert server.client.post("/predict", json={"rows": [after]}).json()["version"] == 1
    assert server.stop() == 0

    answered = _answered_rows(answers)
    answered["after-reject"] = None
    stored = _stored(world.registry.store, world.config)
    assert sorted(stored.index) == sorted(answered)
    del answered["after-reject"]
    _check_stored(world, stored.loc[list(answered)], answered)  # the champion's answers, as returned
    shadow = world.registry.store.load_shadow(world.config.name, world.config.feature_names, 2).set_index("row_id")
    assert sorted(shadow.index) == sorted(sent)  # every answered row, none after the challenger went
    assert (shadow["model_version"] == 1).all()  # paired with the champion's stored answer
    keys = list(sent)
    expected_prediction, expected_score = predict(world.config, world.models[2], pd.DataFrame([sent[k] for k in keys]))
    assert shadow.loc[keys, "shadow_prediction"].tolist() == expected_prediction.tolist()
    np.testing.assert_allclose(shadow.loc[keys, "shadow_score"].to_numpy(float), expected_score, rtol=1e-9)
    with world.registry.store.engine.connect() as conn:
        from sqlalchemy import func, select

        from ml.store import shadow_predictions
        versions = conn.execute(select(shadow_predictions.c.model_version, func.count())
                                .group_by(shadow_predictions.c.model_version)).all()
    assert [tuple(v) for v in versions] == [(2, len(sent))]


# ---- canary (serving.canary_fraction) ---------------------------------------------------------------


def test_canary_split_is_near_the_fraction_and_stable_per_key_across_processes():
    from ml.serving import Canary, ModelHolder, canary_bucket

    keys = [f"user-{i}" for i in range(10_000)]
    for fraction in (0.05, 0.1, 0.5):
        canary = Canary("credit_default", fraction, ModelHolder())
        taken = [canary.takes(key) for key in keys]
        share = sum(taken) / len(keys)
        # 4 standard deviations of a fair coin with this bias on 10k keys: a real hash is well inside.
        assert abs(share - fraction) < 4 * (fraction * (1 - fraction) / len(keys)) ** 0.5, (fraction, share)
        assert [canary.takes(key) for key in keys] == taken  # the same key always goes the same way
    assert not any(Canary("credit_default", 0.0, ModelHolder()).takes(key) for key in keys)
    # Nested: a key in the 5 % canary is in the 10 % one too (raising the fraction moves no one back).
    small, large = Canary("m", 0.05, ModelHolder()), Canary("m", 0.1, ModelHolder())
    assert all(large.takes(key) for key in keys if small.takes(key))
    # Another model's split is its own (not the same users in every canary).
    other = [canary_bucket("other_model", key) < 0.1 for key in keys[:2000]]
    assert other != [canary_bucket("credit_default", key) < 0.1 for key in keys[:2000]]
    # Another process (its own hash salt) puts each key in the same place: replicas and workers agree.
    code = ("import json, sys; from ml.serving import canary_bucket; "
            "print(json.dumps([canary_bucket('credit_default', k) for k in json.load(sys.stdin)]))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(keys[:500]), capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True, timeout=120)
    assert json.loads(out.stdout) == [canary_bucket("credit_default", key) for key in keys[:500]]
    with pytest.raises(ValueError, match="0 <= x < 1"):
        Canary("m", 1.0, ModelHolder())


class _Collect:
    """Stands in for the writer (or the shadow scorer): keeps what it is handed."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def submit(self, rows: list[dict]) -> None:
        self.rows.extend(rows)


def _served(config, version: int, model, *, fast: bool = True):
    from ml.serving import FastPipeline, ServedModel

    return ServedModel(name=config.name, version=version, alias=CHAMPION, model=model, loaded_at=None,
                       data_start=None, data_end=None, verdict="promoted",
                       fast=FastPipeline.compile(model, config) if fast else None)


def test_canary_rows_are_answered_by_the_challenger_and_the_champions_answer_is_stored_beside(home, config):
    """The scorer's routing with in-memory stand-ins for the writer and shadow scorer: each row by its
    key's bucket, both on the caller's thread (fast path) and on the scorer thread (batches)."""
    from ml.serving import Canary, ModelHolder, ScoringService

    sim = CreditDefaultSimulator(seed=0, rows_per_period=150)
    champion = fit_full(config, _labelled(sim, [0, 1]))
    challenger = fit_full(config, _labelled(sim, [4, 5]))
    writer, shadow = _Collect(), _Collect()
    holder, challenger_holder = ModelHolder(), ModelHolder()
    holder.swap(_served(config, 1, champion))
    service = ScoringService(config, holder, writer)
    service.shadow = shadow
    service.canary = canary = Canary(config.name, 0.3, challenger_holder)
    features = CreditDefaultSimulator(seed=7, rows_per_period=200).batch(0).features.drop(columns=["row_id", "ts"])
    records = [{"key": f"k{i}", **row} for i, row in enumerate(features.to_dict("records"))]
    now = datetime.now(UTC)

    # No challenger loaded: every row is the champion's, and the answer still names its version per row.
    answer = service.answer_now({"rows": records[:10]}, now)
    assert answer["version"] == 1 and {p["version"] for p in answer["predictions"]} == {1}
    assert not [r for r in writer.rows if r.get("shadow")] and len(shadow.rows) == 10

    challenger_holder.swap(_served(config, 2, challenger))
    writer.rows.clear()
    shadow.rows.clear()
    answers = [service.answer_now({"rows": records[i:i + 5]}, now) for i in range(10, 60, 5)]  # caller's thread
    service.start()
    answers += [service.predict({"rows": records[i:i + 20]}, now) for i in range(60, 200, 20)]  # scorer thread
    service.stop()
    canary_keys = {r["key"] for r in records[10:] if canary.takes(r["key"])}
    assert 0 < len(canary_keys) < 190
    expected = {}
    for version, model in ((1, champion), (2, challenger)):
        prediction, score = predict(config, model, features.iloc[10:])
        expected[version] = {f"k{i}": (p, s) for i, p, s in zip(range(10, 200), prediction.tolist(), score, strict=True)}
    for answer in answers:
        versions = {p["version"] for p in answer["predictions"]}
        assert answer["version"] == (versions.pop() if len(versions) == 1 else None)  # mixed: read per row
        for p in answer["predictions"]:
            assert p["version"] == (2 if p["key"] in canary_keys else 1), p
            assert (p["prediction"], pytest.approx(p["score"], rel=1e-9)) == expected[p["version"]][p["key"]]
    stored = {r["row_id"]: r for r in writer.rows if not r.get("shadow")}
    paired = {r["row_id"]: r for r in writer.rows if r.get("shadow")}
    assert len(stored) == 190 and all(stored[k]["model_version"] == (2 if k in canary_keys else 1) for k in stored)
    # The champion's answer on each canary row, stored (not returned) under its own version: the gate's pair.
    assert set(paired) == canary_keys and {r["model_version"] for r in paired.values()} == {1}
    assert all(paired[k]["score"] == pytest.approx(expected[1][k][1], rel=1e-9) for k in paired)
    assert all(paired[k]["features"] == stored[k]["features"] for k in paired)
    # serving.shadow gets only the rows the champion answered (a canary row already holds both).
    assert {r["row_id"] for r in shadow.rows} == set(stored) - canary_keys
    assert canary.describe()["answered"] == len(canary_keys) and canary.describe()["challenger"] == 2


def test_a_canary_that_cannot_score_leaves_its_rows_to_the_champion(home, config):
    from ml.serving import Canary, ModelHolder, ScoringService

    model = fit_full(config, _labelled(CreditDefaultSimulator(seed=0, rows_per_period=150), [0, 1]))
    writer, holder, broken = _Collect(), ModelHolder(), ModelHolder()
    holder.swap(_served(config, 1, model))
    broken.swap(_served(config, 2, object(), fast=False))  # no predict: every call raises
    service = ScoringService(config, holder, writer)
    service.canary = Canary(config.name, 0.5, broken)
    rows = CreditDefaultSimulator(seed=7, rows_per_period=40).batch(0).features.drop(columns=["row_id", "ts"])
    payload = {"rows": [{"key": f"b{i}", **row} for i, row in enumerate(rows.to_dict("records"))]}
    service.start()
    answer = service.predict(payload, datetime.now(UTC))
    service.stop()
    assert answer["version"] == 1 and all(p["version"] == 1 for p in answer["predictions"])
    assert not [r for r in writer.rows if r.get("shadow")] and {r["model_version"] for r in writer.rows} == {1}
    described = service.canary.describe()
    assert described["failed"] == sum(service.canary.takes(f"b{i}") for i in range(40)) > 0
    assert described["answered"] == 0 and "AttributeError" in described["last_error"]


def _wait_canary(server: Server, version: int | None, timeout: float = 3 * POLL + 10) -> dict:
    deadline = time.monotonic() + timeout
    while server.client.get("/model").json()["canary"]["challenger"] != version and time.monotonic() < deadline:
        time.sleep(0.2)
    described = server.client.get("/model").json()["canary"]
    assert described["challenger"] == version, (described, server.log())
    return described


def test_canary_answers_a_stable_share_by_key_and_the_shadow_gate_aborts_it(world, servers, tmp_path):
    """The real service with serving.canary_fraction: a share of keys near the fraction answered by the
    challenger, the same key the same way every time, every row stored under the version that answered
    and the champion's answer paired beside each canary row; then the loop's shadow gate step, on the
    real store and MLflow registry, judges the labelled canary rows and aborts the canary (audit entry,
    tags, version page), after which the service answers every key with the champion."""
    import yaml

    from ml import loop
    from ml.config import load_config
    from ml.serving import canary_bucket

    fraction = 0.2
    raw = yaml.safe_load((ROOT / "models" / "credit_default.yaml").read_text())
    raw["promotion"].update(gate="shadow", min_shadow_rows=30)
    raw["serving"] = {"canary_fraction": fraction}
    models = tmp_path / "models"
    models.mkdir()
    (models / "credit_default.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(models / "credit_default.yaml")
    registry = world.registry
    # v3 is pending but not for the shadow gate (no gate tag): it must not answer anyone.
    registry.mark_challenger(3, {}, run_id="train-v3", actor="test")
    server = servers(env={"DRIFTLINE_MODELS_DIR": str(models)})
    assert server.wait_ready()["version"] == 1
    described = server.client.get("/model").json()
    assert described["canary"]["challenger"] is None and described["shadow"] is None
    [refused] = described["canary"]["follower"]["refused"]
    assert refused["version"] == 3 and "gate" in refused["reason"], refused
    # v2, as train_candidate leaves a shadow-gated candidate: pending, gate shadow, its run and data time.
    data_time = datetime.now(UTC) - pd.Timedelta(minutes=1)
    registry.mark_challenger(2, {"gate": "shadow", "mlflow_run_id": registry.info(2).run_id, "trigger": "test",
                                 "reasons": "canary test", "strategy": "full", "data_time": data_time.isoformat()},
                             run_id="train-v2", actor="test")
    _wait_canary(server, 2)

    features = world.rows.drop(columns=["row_id", "ts"]).to_dict("records")
    sent: dict[str, dict] = {}
    answered: dict[str, dict] = {}
    started = time.monotonic()
    for n in range(300):  # one row a request, each its own key, as users arrive
        key = f"user-{n}"
        sent[key] = features[n % len(features)]
        response = server.client.post("/predict", json={"rows": [{"key": key, **sent[key]}]})
        assert response.status_code == 200, response.text
        body = response.json()
        [p] = body["predictions"]
        assert body["version"] == p["version"] and p["key"] == key  # the answer names the version that made it
        answered[key] = {**p, "features": sent[key]}
    canary = {key for key in sent if canary_bucket(config.name, key) < fraction}
    by_challenger = {key for key, p in answered.items() if p["version"] == 2}
    assert by_challenger == canary, "routed by anything but the key's bucket"
    assert abs(len(by_challenger) / len(sent) - fraction) < 0.1, len(by_challenger)
    assert {p["version"] for key, p in answered.items() if key not in canary} == {1}
    # The same key again (a retry, a returning user), alone or among others: the same version.
    again = list(sent)[:60]
    for start in range(0, 60, 10):
        body = server.client.post("/predict", json={"rows": [{"key": k, **sent[k]} for k in again[start:start + 10]]})
        assert [p["version"] for p in body.json()["predictions"]] == [answered[k]["version"] for k in again[start:start + 10]]
    print(f"\ncanary: {len(by_challenger)}/{len(sent)} keys answered by v2 (fraction {fraction}), "
          f"{time.monotonic() - started:.1f} s for {len(sent) + 6} requests")

    # Stored: every row once, under the version that answered, with that answer; the champion's own
    # answer on each canary row in the shadow table under v1 (what that version's model gives).
    stored = _wait_stored(registry.store, config, len(sent))
    assert sorted(stored.index) == sorted(sent)
    _check_stored(world, stored, {k: {"version": p["version"], "prediction": p["prediction"], "score": p["score"],
                                      "features": p["features"]} for k, p in answered.items()})
    paired = registry.store.load_shadow(config.name, config.feature_names, 1, champion=2).set_index("row_id")
    assert sorted(paired.index) == sorted(canary)
    keys = sorted(canary)
    _, champion_score = predict(config, world.models[1], pd.DataFrame([sent[k] for k in keys]))
    np.testing.assert_allclose(paired.loc[keys, "shadow_score"].to_numpy(float), champion_score, rtol=1e-9)
    assert server.client.get("/model").json()["canary"]["answered"] == len(canary) + sum(k in canary for k in again)

    # Labels arrive: each canary row labelled against the challenger's ranking (its scores above the
    # median are the negatives), so it cannot pass the gate; then the loop's shadow gate step.
    scores = pd.Series({k: answered[k]["score"] for k in keys})
    labelled_at = datetime.now(UTC)
    registry.store.add_labels(config.name, pd.DataFrame({
        "row_id": keys, "label": [int(scores[k] <= scores.median()) for k in keys], "labelled_at": labelled_at}))
    ctx = loop.Context.open(config)
    run = loop.RunInfo("canary-judge", actor="test", params={"as_of": datetime.now(UTC).isoformat()})
    judged = loop.evaluate_shadow(ctx, run)
    assert judged["status"] == "evaluated" and judged["evaluation"]["verdict"] == "reject", judged["summary"]
    assert judged["candidate"]["canary"] == {"fraction": fraction, "rows": len(canary), "paired_rows": len(canary),
                                             "champion": 1}
    outcome = loop.reject(ctx, run, judged["candidate"], judged["evaluation"])
    assert outcome["canary"]["action"] == "aborted" and registry.champion() == 1

    [entry] = registry.store.audit_log(config.name, ["canary_aborted"])
    assert (entry["version"], entry["run_id"], entry["details"]["rows"]) == (2, "canary-judge", len(canary))
    info = registry.info(2)
    assert (info.tag("verdict"), info.tag("canary")) == ("rejected", "aborted") and "challenger" not in info.aliases
    page = registry.description(2)
    assert page.startswith(f"**v2 canary aborted: it answered {len(canary)} of the {len(canary)} labelled rows")
    assert "as the canary" in page  # the gate's "evaluated on" line

    # Aborted: the service drops the challenger within a poll, and every key goes to the champion.
    _wait_canary(server, None)
    body = server.client.post("/predict", json={"rows": [{"key": k, **sent[k]} for k in keys[:10]]}).json()
    assert body["version"] == 1 and {p["version"] for p in body["predictions"]} == {1}
    assert server.stop() == 0
