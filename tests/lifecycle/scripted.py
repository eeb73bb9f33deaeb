"""A scripted oracle with the oracle's duck-typed interface, for lifecycle tests.

Each structure carries its script in ``atoms.info``: ``"script"`` is the list of outcomes
of its successive attempts (``"converged"`` or a failure class), ``"preflight"`` an optional
permanent failure found without running. The run function writes a real attempt folder,
like pw.x would, so resume/set-aside logic is exercised on disk.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlip_autopipec.oracle import PERMANENT  # the one definition (re-exported for tests)


@dataclass(frozen=True)
class ScriptedResult:
    number: int
    attempt_dir: str
    failure_class: str
    message: str = ""
    energy: float | None = None
    free_energy: float | None = None
    forces: list[list[float]] | None = None
    stress: list[float] | None = None
    wall_time: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure_class == "converged"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScriptedResult:
        return cls(**data)


@dataclass(frozen=True)
class ScriptedRequest:
    structure_id: str
    number: int
    attempt_dir: Path
    outcome: str
    atoms: Atoms = field(compare=False)


def expected_energy(atoms: Atoms) -> float:
    """Deterministic 'DFT' energy of a structure (a function of its geometry only)."""
    return float(-3.5 * len(atoms) + 0.01 * np.sum(atoms.positions))


class ScriptedOracle:
    """preflight / next_request following ``atoms.info``; gives up after ``max_attempts``."""

    def __init__(self, max_attempts: int = 4):
        self.max_attempts = max_attempts
        self.requests: list[ScriptedRequest] = []

    def preflight(self, atoms: Atoms) -> ScriptedResult | None:
        cls = atoms.info.get("preflight")
        if cls:
            return ScriptedResult(0, "", str(cls), message="found before running")
        return None

    def next_request(
        self, structure_id: str, atoms: Atoms, history: list[Any], workdir: Path
    ) -> ScriptedRequest | None:
        n = len(history) + 1
        if n > self.max_attempts:
            return None
        assert all(h.failure_class not in PERMANENT for h in history), "retried a permanent"
        script = list(atoms.info.get("script", ["converged"]))
        outcome = script[n - 1] if n - 1 < len(script) else script[-1]
        req = ScriptedRequest(structure_id, n, workdir / f"attempt-{n:02d}", outcome, atoms)
        self.requests.append(req)
        return req


def run_scripted(request: ScriptedRequest) -> ScriptedResult:
    """Write an attempt folder and return the scripted outcome."""
    request.attempt_dir.mkdir(parents=True, exist_ok=False)
    (request.attempt_dir / "espresso.pwo").write_text(f"outcome {request.outcome}\n")
    if request.outcome == "converged":
        atoms = request.atoms
        e = expected_energy(atoms)
        return ScriptedResult(
            request.number,
            str(request.attempt_dir),
            "converged",
            energy=e,
            free_energy=e - 0.001,
            forces=np.full((len(atoms), 3), 0.1).tolist(),
            stress=[0.01, 0.02, 0.03, 0.0, 0.0, 0.0],
        )
    return ScriptedResult(
        request.number, str(request.attempt_dir), request.outcome, message="scripted failure"
    )


class Killed(BaseException):
    """Stands in for SIGKILL: escapes everything, nothing after it runs."""


class InlineExecutor(Executor):
    """Runs each submission at once in the caller; 'dies' at the ``kill_at``-th submission."""

    _max_workers = 2

    def __init__(self, kill_at: int | None = None):
        self.kill_at = kill_at
        self.submitted = 0
        self._lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        if self.kill_at is not None and self.submitted >= self.kill_at:
            # half-written attempt folder, as a killed pw.x leaves it
            request = args[0]
            request.attempt_dir.mkdir(parents=True, exist_ok=True)
            (request.attempt_dir / "espresso.pwo").write_text("partial")
            raise Killed()
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


def scripted_atoms(i: int, script: list[str], preflight: str | None = None) -> Atoms:
    """A small distinct Si cell carrying its script."""
    a = 5.43 + 0.01 * i
    atoms = Atoms(
        "Si2",
        scaled_positions=[[0, 0, 0], [0.25, 0.25, 0.25]],
        cell=[[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]],
        pbc=True,
    )
    atoms.info["script"] = list(script)
    if preflight:
        atoms.info["preflight"] = preflight
    return atoms
