"""Exploration walkers: molecular dynamics with the current potential, watched by its gamma.

A walker is one MD run (Langevin NVT, or Langevin-Hoover NPT via ASE's ``LangevinBAOAB``)
with the potential of a fit folder loaded *with its active set*, so every force call also
gives the per-atom extrapolation grade gamma in-process (``PyACECalculator.set_active_set``
on the B-basis ``.yaml``; see :func:`mlip_autopipec.trainer.calculator.load_calculator`).

Every ``sample_every`` steps the frame is recorded with its max gamma; frames above
``gamma_select`` are candidates for labelling. The walker stops early when max gamma exceeds
``gamma_halt`` (the potential is lost: pacemaker's docs collect at ~5 and stop at ~25) or
two atoms come closer than ``min_distance`` (the oracle's preflight limit). The frame that
tripped the halt is kept as a candidate (it is what the potential got wrong) unless atoms
overlap.

:func:`run_walker` is a plain module-level function of a picklable request, like
``oracle.attempt.run_attempt``, so it runs through the same executor (thread pool or parsl).
Seeds are explicit: the same request gives the same trajectory.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.io import jsonio

from mlip_autopipec.execution.tasks import where

#: Why a walker stopped.
COMPLETED = "completed"
HALT_GAMMA = "gamma_halt"
HALT_DISTANCE = "min_distance"
HALT_ERROR = "error"

ENSEMBLES = ("nvt", "npt")
#: eV/Å^3 per GPa.
GPA = units.GPa


@dataclass(frozen=True)
class WalkerRequest:
    """Everything one walker needs; picklable (plain values and an Atoms)."""

    key: str
    atoms: Atoms
    fit_dir: str
    potential_id: int
    ensemble: str
    temperature_K: float
    pressure_GPa: float
    timestep_fs: float
    steps: int
    seed: int
    gamma_select: float
    gamma_halt: float
    min_distance: float
    sample_every: int = 10
    friction_per_fs: float = 0.01
    condition: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Frame:
    """One recorded MD frame: the structure (no calculator) and what the potential said."""

    step: int
    atoms: Atoms
    max_gamma: float
    energy: float
    max_force: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "atoms": str(jsonio.encode(self.atoms)),
            "max_gamma": self.max_gamma,
            "energy": self.energy,
            "max_force": self.max_force,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Frame:
        atoms = jsonio.decode(data["atoms"])
        return cls(
            step=int(data["step"]),
            atoms=atoms,
            max_gamma=float(data["max_gamma"]),
            energy=float(data["energy"]),
            max_force=float(data["max_force"]),
        )


@dataclass(frozen=True)
class WalkerResult:
    """What one walker found. ``frames`` are every sampled frame (candidates have
    ``max_gamma > gamma_select``); ``survival_fs`` is the simulated time before a halt
    (the full length when it completed)."""

    key: str
    stop_reason: str
    steps_done: int
    survival_fs: float
    max_gamma: float
    frames: tuple[Frame, ...]
    temperatures: tuple[float, ...]
    energies: tuple[float, ...]
    wall_time: float
    message: str = ""
    #: The process that ran the walker (``execution.tasks.where``: host, pid, slurm_job_id).
    where: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frames"] = [f.to_dict() for f in self.frames]
        out["temperatures"] = list(self.temperatures)
        out["energies"] = list(self.energies)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WalkerResult:
        kwargs = dict(data)
        kwargs["frames"] = tuple(Frame.from_dict(f) for f in data["frames"])
        kwargs["temperatures"] = tuple(data["temperatures"])
        kwargs["energies"] = tuple(data["energies"])
        return cls(**kwargs)


@contextmanager
def quiet_pyace_import() -> Iterator[None]:
    """Import pyace modules inside this block: ``pyace`` and ``pyace.aceselect`` call
    ``logging.basicConfig(level=INFO)`` on import, which would make every library's INFO
    messages appear in the run's output; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def min_distance_of(atoms: Atoms) -> float:
    """Smallest interatomic distance (minimum image); inf for a single atom."""
    if len(atoms) < 2:
        return float("inf")
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", atoms, 3.0)
    if len(d):
        return float(np.min(d))
    return float(np.min(atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)]))


def make_dynamics(atoms: Atoms, request: WalkerRequest) -> Any:
    """The ASE integrator for ``request.ensemble`` (seeded)."""
    from ase.md.langevin import Langevin
    from ase.md.langevinbaoab import LangevinBAOAB

    dt = request.timestep_fs * units.fs
    rng = np.random.default_rng(request.seed + 1)
    if request.ensemble == "nvt":
        return Langevin(
            atoms,
            dt,
            temperature_K=request.temperature_K,
            friction=request.friction_per_fs / units.fs,
            fixcm=False,  # the centre of mass is held by FixCom (run_walker)
            rng=rng,
        )
    if request.ensemble == "npt":
        # Stress is minus pressure in ASE; T_tau ~ 1/friction, P_tau 20x longer (ASE default).
        t_tau = 1.0 / request.friction_per_fs * units.fs
        return LangevinBAOAB(
            atoms,
            dt,
            temperature_K=request.temperature_K,
            externalstress=-request.pressure_GPa * GPA,
            hydrostatic=True,
            T_tau=t_tau,
            P_tau=20 * t_tau,
            rng=rng,
        )
    raise ValueError(f"unknown ensemble {request.ensemble!r} (use one of {ENSEMBLES})")


def _frame(atoms: Atoms, step: int) -> Frame:
    calc = atoms.calc
    assert calc is not None
    gamma = np.asarray(calc.results.get("gamma", [np.nan]), dtype=float)
    forces = np.asarray(calc.results["forces"], dtype=float)
    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    return Frame(
        step=step,
        atoms=clean,
        max_gamma=float(np.max(gamma)),
        energy=float(calc.results["energy"]),
        max_force=float(np.max(np.linalg.norm(forces, axis=1))) if len(forces) else 0.0,
    )


def run_walker(request: WalkerRequest) -> WalkerResult:
    """Run one walker to completion or halt; never raises for a physics problem.

    A potential that cannot be loaded or an integrator that blows up ends the walker
    with ``stop_reason="error"`` and the message (the loop records it; other walkers go on).
    """
    from ase.constraints import FixCom
    from ase.md import velocitydistribution as vd

    from mlip_autopipec.trainer.calculator import load_calculator

    start = time.monotonic()
    atoms = request.atoms.copy()
    frames: list[Frame] = []
    temperatures: list[float] = []
    energies: list[float] = []
    max_gamma = 0.0
    step = 0
    reason = COMPLETED
    message = ""
    try:
        with quiet_pyace_import():
            import pyace  # noqa: F401 - imported here for its logging side effect only

        atoms.calc = load_calculator(Path(request.fit_dir), extrapolation=True)
        # thermalize_momenta is ASE >= 3.29's name for MaxwellBoltzmannDistribution.
        thermalize = getattr(vd, "thermalize_momenta", vd.MaxwellBoltzmannDistribution)
        thermalize(
            atoms, temperature_K=request.temperature_K, rng=np.random.default_rng(request.seed)
        )
        vd.Stationary(atoms)
        if request.ensemble == "nvt":
            # Langevin's own fixcm is deprecated in favour of FixCom. LangevinBAOAB (npt)
            # warns that it is untested with constraints, so npt walkers run without one
            # (a slow centre-of-mass drift does not change the sampled configurations).
            atoms.set_constraint(FixCom())
        with warnings.catch_warnings():
            # LangevinBAOAB reports its heuristic barostat mass as a UserWarning.
            warnings.filterwarnings("ignore", "Using heuristic P_mass", UserWarning)
            dyn = make_dynamics(atoms, request)
        atoms.get_forces()
        for step in range(request.steps + 1):
            if step > 0:
                dyn.run(1)
            frame = _frame(atoms, step)
            max_gamma = max(max_gamma, frame.max_gamma)
            dmin = min_distance_of(atoms)
            if not np.isfinite(frame.energy) or not np.isfinite(frame.max_gamma):
                reason, message = HALT_ERROR, f"non-finite energy or gamma at step {step}"
                break
            if dmin < request.min_distance:
                reason = HALT_DISTANCE
                message = f"atoms {dmin:.3f} Å apart at step {step}"
                break
            if frame.max_gamma > request.gamma_halt:
                frames.append(frame)
                reason = HALT_GAMMA
                message = f"max gamma {frame.max_gamma:.3g} at step {step}"
                break
            if step % request.sample_every == 0:
                frames.append(frame)
                temperatures.append(float(atoms.get_temperature()))
                energies.append(frame.energy + float(atoms.get_kinetic_energy()))
    except Exception as exc:  # noqa: BLE001 - a walker reports, the loop decides
        reason, message = HALT_ERROR, f"{type(exc).__name__}: {exc}"
    survival = (step if reason != COMPLETED else request.steps) * request.timestep_fs
    return WalkerResult(
        key=request.key,
        stop_reason=reason,
        steps_done=step,
        survival_fs=float(survival),
        max_gamma=float(max_gamma),
        frames=tuple(frames),
        temperatures=tuple(temperatures),
        energies=tuple(energies),
        wall_time=time.monotonic() - start,
        message=message,
        where=where(),
    )


def result_json(result: WalkerResult) -> str:
    """The result as JSON text (what the loop stores)."""
    return json.dumps(result.to_dict())
