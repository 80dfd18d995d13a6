"""Two registry moves racing, in threads or in processes, with every checkpoint they pass logged in
one global order.

Each racer's first checkpoint waits (up to ``wait`` seconds) for the other racer's first checkpoint.
Without the model lock both get there, having both read the aliases, and their writes interleave from
then on; with it, the other racer is still waiting for the lock, the wait runs out, and the two moves
run one after the other. Imports stay light on purpose: a spawned racer imports this module, and the
test module pulls in the whole loop (Evidently, the simulator), which would cost every racer ~10 s.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ml import registry, tracking
from ml.registry import Registry
from ml.settings import get_settings
from ml.store import Store

DATA_TIME = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)

# A move: ("promote", version, run_id) or ("rollback", version, run_id); picklable for processes.
Move = tuple[str, int, str]


def open_registry(name: str) -> Registry:
    """A new Registry on the current DRIFTLINE_HOME / DRIFTLINE_STORE_URL, as a task would build it."""
    settings = get_settings()
    return Registry(name, Store(settings.store_url), tracking.client(settings))


def act(r: Registry, move: Move) -> dict[str, Any]:
    kind, version, run_id = move
    if kind == "promote":
        return r.promote(version, run_id=run_id, actor=run_id, reasons=[f"v{version} passed the gate"],
                         data_time=DATA_TIME)
    if kind == "rollback":
        return r.rollback(version, run_id=run_id, actor=run_id, reason=f"{run_id} rolls back")
    raise ValueError(f"unknown move {kind!r}")


@dataclass
class Race:
    results: dict[str, Any] = field(default_factory=dict)  # racer -> the move's result, or its error
    steps: list[tuple[str, str]] = field(default_factory=list)  # (racer, checkpoint) in global order
    met: dict[str, bool] = field(default_factory=dict)  # racer -> did the other reach a checkpoint meanwhile

    @property
    def first(self) -> str:
        return self.steps[0][0]

    @property
    def interleaved(self) -> bool:
        """Did a racer pass a checkpoint between two of the other's?"""
        return len([racer for racer, _ in itertools.groupby(r for r, _ in self.steps)]) > len(self.results)

    def check_errors(self) -> None:
        errors = {name: result for name, result in self.results.items() if isinstance(result, str)}
        assert not errors, errors


def _meet(barrier: Any, wait: float) -> bool:
    try:
        barrier.wait(wait)
        return True
    except threading.BrokenBarrierError:
        return False


def race_threads(name: str, moves: dict[str, Move], wait: float) -> Race:
    """Run ``moves`` at once, one thread each, each with its own Registry (the store's engine is
    shared, as in one Airflow worker process)."""
    race = Race()
    start, meeting = threading.Barrier(len(moves)), threading.Barrier(len(moves))
    guard, local = threading.Lock(), threading.local()

    def checkpoint(step: str) -> None:
        with guard:
            race.steps.append((local.racer, step))
        if local.racer not in race.met:
            race.met[local.racer] = _meet(meeting, wait)

    def run(racer: str, move: Move) -> None:
        local.racer = racer
        r = open_registry(name)
        start.wait(60)
        try:
            race.results[racer] = act(r, move)
        except Exception as exc:  # noqa: BLE001 (reported by check_errors, with the racer's name)
            race.results[racer] = f"{type(exc).__name__}: {exc}"

    original, registry.checkpoint = registry.checkpoint, checkpoint
    try:
        threads = [threading.Thread(target=run, args=item) for item in moves.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    finally:
        registry.checkpoint = original
    return race


def _racer_process(name: str, racer: str, move: Move, start: Any, meeting: Any, seq: Any, out: Any,
                   wait: float) -> None:
    met: list[bool] = []

    def checkpoint(step: str) -> None:
        with seq.get_lock():  # the counter gives the global order; put under the same lock
            seq.value += 1
            out.put(("step", seq.value, racer, step))
        if not met:
            met.append(_meet(meeting, wait))

    registry.checkpoint = checkpoint
    r = open_registry(name)
    start.wait(900)  # spawned racers import MLflow first: minutes apart on a loaded 2-core machine
    try:
        result: Any = act(r, move)
    except Exception as exc:  # noqa: BLE001 (sent to the parent, which names it)
        result = f"{type(exc).__name__}: {exc}"
    out.put(("result", racer, result, met[0] if met else None))


def race_processes(name: str, moves: dict[str, Move], wait: float) -> Race:
    """Run ``moves`` at once, one fresh (spawned) process each: nothing shared but the databases
    and the environment."""
    ctx = multiprocessing.get_context("spawn")
    start, meeting = ctx.Barrier(len(moves)), ctx.Barrier(len(moves))
    seq, out = ctx.Value("i", 0), ctx.Queue()
    processes = [
        ctx.Process(target=_racer_process, args=(name, racer, move, start, meeting, seq, out, wait))
        for racer, move in moves.items()
    ]
    for process in processes:
        process.start()
    race, steps = Race(), []
    try:
        while len(race.results) < len(moves):
            try:
                item = out.get(timeout=600)
            except queue.Empty:
                raise AssertionError(f"racers did not finish: {race.results}, exit codes "
                                     f"{[p.exitcode for p in processes]}") from None
            if item[0] == "step":
                steps.append(item[1:])
            else:
                _, racer, result, met = item
                race.results[racer] = result
                if met is not None:
                    race.met[racer] = met
    finally:
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.kill()
    race.steps = [(racer, step) for _, racer, step in sorted(steps)]
    return race
