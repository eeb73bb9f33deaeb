"""Isolated-atom reference energies (recipe ``trainer.reference: isolated_atoms``).

One atom per element is labelled with pw.x and its energy becomes the element's reference
energy of the fit (``E0`` in the ``.yace``), so the potential's energy of a structure minus
the sum of its atoms' references is the DFT cohesive (atomisation) energy.

The physics choices, recorded with each reference (``RUN_DIR/reference/isolated_atoms.json``):

- **Same level of theory as the training labels**: the functional, pseudopotential files,
  ``ecutwfc``/``ecutrho`` and every other Hamiltonian key are taken from the theory record
  of the fitted labels (not re-read from the recipe), so the atom and the crystal differ
  only where an atom must.
- **Spin-polarised** (``nspin = 2``) with Hund's-rule moment (ASE's
  ``ground_state_magnetic_moments``: Si, C 2 μB, Al 1 μB, Fe 4 μB) as the initial moment:
  an isolated open-shell atom is magnetic even when its crystal is not (a non-magnetic
  crystal's spin-polarised solution is its unpolarised one, so the two energies compare).
- **Occupations**: when the training theory uses smearing, the atom uses the same smearing
  and width and its moment is free. With fixed occupations (an insulator's theory) the atom
  keeps fixed occupations with ``tot_magnetization`` = its Hund's-rule moment: integer
  occupations are what an isolated atom has, and a smearing width would add an entropy term
  the labels do not have. A closed-shell atom (moment 0) is computed unpolarised.
- **Box**: orthorhombic ``L x 1.05 L x 1.1 L`` (``trainer.reference_box``): unequal edges
  lift the cubic degeneracy of partly filled p/d shells; the Γ point only.
- **Box convergence**: the atom is labelled in ``L`` and ``L + reference_box_step``; while
  the two energies differ by more than ``reference_box_tolerance`` (meV/atom) the box grows
  by a step, up to ``reference_box_max`` (then the fit stops with the figures). The
  reference is the larger box of the converged pair; both energies and their difference
  are recorded (``box_convergence``), also in ``potential.json``.
- **Where**: each pw.x attempt is a task of the run's executor (:func:`run_isolated_attempt`;
  on Parsl/Slurm in the pilot job, not on the login node), recorded as its ``execution``.
- **Retries keep the theory**: the atom's retry ladder is the labels' without the steps
  that change the level of theory (smearing, degauss, denser k-points;
  :func:`~mlip_autopipec.oracle.ladder.theory_preserving`): mixing, restarts from the
  saved density and the eigensolver remain. Such a rescue would be no reference for the
  labels, so it is not tried. Measured: Si (pz-vbc, 15 Ry, fixed occupations, 2 μB) with
  ``electron_maxstep`` 12 converges in the 8 Å box at once, but in the 9 Å box its
  occupations flip between the near-degenerate p orbitals; the full ladder went to smearing
  at the second attempt (then refused: the fit stopped), the theory-keeping one converges
  at the fifth (local-TF mixing, then cg from the saved density). An atom that no step
  converges (or a recipe ladder step that still changes the theory) stops the fit with a
  message.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ase import Atoms
from ase.data import atomic_numbers, ground_state_magnetic_moments

from mlip_autopipec.errors import TrainerError
from mlip_autopipec.fsutil import atomic_write_json
from mlip_autopipec.oracle.attempt import AttemptRequest, AttemptResult, run_attempt
from mlip_autopipec.oracle.espresso import EspressoOracle
from mlip_autopipec.oracle.ladder import theory_preserving
from mlip_autopipec.oracle.theory import theory_settings

#: Where the isolated-atom labels live in a run directory.
REFERENCE_DIR: Final = "reference"
RECORD_FILE: Final = "isolated_atoms.json"
#: Edge ratios of the orthorhombic box (no cubic degeneracy of p/d shells).
BOX_RATIOS: Final = (1.0, 1.05, 1.1)


def hund_moment(element: str) -> float:
    """The ground-state moment (μB) of the free atom (ASE's table)."""
    return float(ground_state_magnetic_moments[atomic_numbers[element]])


def atom_in_box(element: str, box: float) -> Atoms:
    """One atom of ``element`` in an orthorhombic box, with its Hund's-rule initial moment."""
    atoms = Atoms(element, positions=[[0.0, 0.0, 0.0]], cell=[box * r for r in BOX_RATIOS])
    atoms.pbc = True
    atoms.set_initial_magnetic_moments([hund_moment(element)])
    return atoms


def isolated_atom_cfg(
    oracle_cfg: Mapping[str, Any], theory: Mapping[str, Any], element: str
) -> dict[str, Any]:
    """The oracle settings of the isolated ``element`` atom for the training ``theory``
    (a label's theory record): the recipe's numerics, the labels' Hamiltonian, Γ only."""
    cfg = copy.deepcopy(dict(oracle_cfg))
    for key in ("converge", "kspacing"):
        cfg.pop(key, None)
    cfg["kpts"] = [1, 1, 1]
    cfg["koffset"] = [0, 0, 0]
    input_data = cfg.setdefault("input_data", {})
    system = input_data.setdefault("system", {})
    for key in ("occupations", "smearing", "degauss", "nspin", "tot_magnetization"):
        system.pop(key, None)
    system["ecutwfc"] = theory["ecutwfc"]
    system["ecutrho"] = theory["ecutrho"]
    if theory.get("input_dft"):
        system["input_dft"] = theory["input_dft"]
    for key, value in (theory.get("other") or {}).items():
        section, name = key.split(".", 1)
        input_data.setdefault(section, {})[name] = value
    moment = hund_moment(element)
    if theory.get("occupations") == "smearing":
        system.update(
            occupations="smearing", smearing=theory["smearing"], degauss=theory["degauss"]
        )
    else:
        system["occupations"] = theory.get("occupations") or "fixed"
        if moment:
            system["tot_magnetization"] = moment
    return cfg


def _fingerprint(cfg: Mapping[str, Any], element: str, box: float, pseudo: Path) -> str:
    text = json.dumps({"cfg": cfg, "element": element, "box": box}, sort_keys=True, default=str)
    h = hashlib.sha256(text.encode())
    h.update(pseudo.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class BoxCheck:
    """The outcome of the box search of one element (:func:`box_search`).

    ``boxes``: the edges labelled, in order; ``checked``: the last box compared with the
    next larger one (``used``); ``difference_ev`` = E(used) - E(checked).
    """

    converged: bool
    boxes: tuple[float, ...]
    checked: float
    used: float
    difference_ev: float


def _edge(box: float) -> float:
    return round(float(box), 6)


def box_search(
    first: float,
    step: float,
    largest: float,
    energies: Mapping[float, float],
    tolerance_ev: float,
) -> tuple[list[float], BoxCheck | None]:
    """The next boxes to label, or the outcome once ``energies`` (edge -> eV) suffice.

    Boxes ``first``, ``first + step``, ... up to ``largest``: the box ``L`` is converged when
    ``|E(L + step) - E(L)| <= tolerance_ev``; the reference is then the larger box's energy
    (the better of the two). Returns ``(missing, None)`` while a box of the comparison is
    not labelled yet, else ``([], outcome)``; ``outcome.converged`` is False when the
    largest box was reached without convergence (the last comparison is reported).
    """
    if step <= 0 or first + step > largest + 1e-9:
        raise ValueError(f"no box to compare with: {first} + {step} > {largest}")
    box, boxes = _edge(first), [_edge(first)]
    while True:
        bigger = _edge(box + step)
        missing = [b for b in (box, bigger) if b not in energies]
        if missing:
            return missing, None
        boxes.append(bigger)
        diff = float(energies[bigger]) - float(energies[box])
        if abs(diff) <= tolerance_ev or bigger + step > largest + 1e-9:
            return [], BoxCheck(abs(diff) <= tolerance_ev, tuple(boxes), box, bigger, diff)
        box = bigger


def run_isolated_attempt(request: AttemptRequest) -> tuple[AttemptResult, dict[str, Any]]:
    """One pw.x attempt of an isolated atom (:func:`run_attempt`) and where it ran (host,
    pid, thread, slurm_job_id, seconds): the task the run's executor runs, with the request
    as its argument as every label's (on Parsl: in the pilot job, with the MPI launcher)."""
    from mlip_autopipec.execution.tasks import where

    start = time.time()
    result = run_attempt(request)
    return result, {**where(), "seconds": time.time() - start}


#: Runs a batch of attempts with :func:`run_isolated_attempt` (in parallel on an executor),
#: results in order.
RunBatch = Callable[[Sequence[AttemptRequest]], list[tuple[AttemptResult, dict[str, Any]]]]


def _run_here(requests: Sequence[AttemptRequest]) -> list[tuple[AttemptResult, dict[str, Any]]]:
    return [run_isolated_attempt(r) for r in requests]


def label_isolated_atoms(
    jobs: Sequence[tuple[Mapping[str, Any], str, Path, float, Path]], run: RunBatch
) -> list[dict[str, Any]]:
    """Label isolated atoms, one per job ``(cfg, element, pseudo, box, workdir)``: preflight
    and the retry ladder as every label, the attempts run by ``run`` (every job's next
    attempt in one batch). Returns per job ``history`` (:meth:`AttemptResult.to_dict`) and
    ``execution`` (where its last attempt ran, the seconds of all; also written to
    ``workdir / execution.json``)."""
    from mlip_autopipec.execution.tasks import EXECUTION_JSON

    oracles = [EspressoOracle(dict(cfg), {el: Path(pp)}) for cfg, el, pp, _, _ in jobs]
    for oracle in oracles:
        # a rescue that changes the theory gives no reference for the labels: skip those
        # steps, so the ladder goes on with the ones that keep it
        oracle.ladders = theory_preserving(oracle.ladders)
    atoms = [atom_in_box(el, box) for _, el, _, box, _ in jobs]
    histories: list[list[AttemptResult]] = []
    for oracle, one in zip(oracles, atoms, strict=True):
        failed = oracle.preflight(one)
        histories.append([] if failed is None else [failed])
    executions: list[dict[str, Any]] = [{} for _ in jobs]
    seconds = [0.0 for _ in jobs]
    active = [i for i, h in enumerate(histories) if not h]
    while active:
        requests = {}
        for i in active:
            el, workdir = jobs[i][1], Path(jobs[i][4])
            req = oracles[i].next_request(f"isolated-{el}", atoms[i], histories[i], workdir)
            if req is not None:
                requests[i] = req
        for i, (result, ran) in zip(requests, run(list(requests.values())), strict=True):
            histories[i].append(result)
            executions[i] = ran
            seconds[i] += float(ran.get("seconds") or 0.0)
        active = list(requests)
    out = []
    for i, job in enumerate(jobs):
        execution = {**executions[i], "seconds": seconds[i]} if executions[i] else None
        if execution is not None:
            atomic_write_json(Path(job[4]) / EXECUTION_JSON, execution)
        out.append({"history": [h.to_dict() for h in histories[i]], "execution": execution})
    return out


def _box_label(
    el: str, box: float, cfg: Mapping[str, Any], done: Mapping[str, Any], workdir: Path,
    run_dir: Path, fingerprint: str,
) -> dict[str, Any]:  # fmt: skip
    """The record of one labelled box from the task's result ``done``; raises
    :class:`TrainerError` when the atom did not converge or changed the theory."""
    last = AttemptResult.from_dict(done["history"][-1])
    if not last.ok or last.energy is None:
        raise TrainerError(
            f"trainer.reference isolated_atoms: the isolated {el} atom ({box:g} Å box) did "
            f"not converge ({last.failure_class}: {last.message}; {workdir}); set "
            "trainer.reference to fit, or adjust the oracle settings"
        )
    changed = theory_settings(last.params_diff or {})
    if changed:
        raise TrainerError(
            f"trainer.reference isolated_atoms: the isolated {el} atom converged only "
            f"with another level of theory ({', '.join(sorted(changed))} changed by the "
            f"retry ladder; {workdir}): its energy is no reference for the labels"
        )
    system = cfg["input_data"]["system"]
    # what the fit's targets are (trainer/dataset.dft_labels): the free energy when
    # pw.x gives one (with smearing it is the "!" energy), else the energy
    free = last.free_energy if last.free_energy is not None else last.energy
    return {
        "box": box,
        "energy": float(free),
        "total_energy": float(last.energy),
        "total_magmom": last.total_magmom,
        "theory_key": last.theory_key,
        "settings": {
            "box_ang": [box * r for r in BOX_RATIOS],
            "kpts": [1, 1, 1],
            "initial_moment": hund_moment(el),
            "occupations": system.get("occupations"),
            "smearing": system.get("smearing"),
            "degauss": system.get("degauss"),
            "tot_magnetization": system.get("tot_magnetization"),
        },
        "attempts": len(done["history"]),
        "workdir": str(workdir.relative_to(run_dir)),
        "fingerprint": fingerprint,
        "execution": done.get("execution"),
    }


def _cached_labels(records: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """fingerprint -> labelled box of a record file (records written before the box check
    are one label each: the box they were computed in)."""
    out: dict[str, dict[str, Any]] = {}
    for record in records.values():
        if not isinstance(record, Mapping):
            continue
        labels = record.get("labels")
        if labels is None and record.get("fingerprint") and record.get("settings"):
            box = _edge(record["settings"]["box_ang"][0])
            labels = [{**record, "box": box}]
        for label in labels or ():
            out[str(label["fingerprint"])] = dict(label)
    return out


def isolated_atom_references(
    elements: Sequence[str],
    theory: Mapping[str, Any],
    oracle_cfg: Mapping[str, Any],
    pseudopotentials: Mapping[str, Path],
    run_dir: Path | str,
    boxes: Mapping[str, float],
    run: RunBatch | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """element -> record of one isolated atom per element, labelled with pw.x in boxes
    grown until the energy is converged with the box.

    ``boxes``: ``first``, ``step``, ``largest`` (Å) and ``tolerance_mev`` (meV/atom; the
    recipe's ``trainer.reference_box``, ``reference_box_step``, ``reference_box_max``,
    ``reference_box_tolerance``), see :func:`box_search`. The record: ``energy`` (eV, the
    free energy as the fit's targets, of the larger box of the converged pair),
    ``total_magmom`` μB, ``theory_key``, ``settings``, ``attempts``, ``workdir``,
    ``execution`` (where pw.x ran) of that box, ``box_convergence`` (the boxes, their
    energies, the difference and the tolerance) and ``labels`` (every box labelled).

    ``run`` runs a batch of pw.x attempts (:func:`run_isolated_attempt`) on the run's
    executor; None runs them here, one after another; ``say`` is told which boxes
    are labelled (a larger box costs more: the plane waves grow with the volume). Every
    labelled box is cached in ``RUN_DIR/reference/isolated_atoms.json`` with a fingerprint
    of its settings (a resumed or refitted run reuses them; changed settings relabel). Raises
    :class:`TrainerError` when an atom does not converge, its rescue changed the level of
    theory, or its energy is not converged in the largest box.
    """
    run = run or _run_here
    run_dir = Path(run_dir)
    folder = run_dir / REFERENCE_DIR
    record_path = folder / RECORD_FILE
    records: dict[str, Any] = json.loads(record_path.read_text()) if record_path.is_file() else {}
    cached = _cached_labels(records)
    first, step = float(boxes["first"]), float(boxes["step"])
    largest, tolerance = float(boxes["largest"]), float(boxes["tolerance_mev"]) / 1000.0
    cfgs = {el: isolated_atom_cfg(oracle_cfg, theory, el) for el in sorted(elements)}
    labels: dict[str, dict[float, dict[str, Any]]] = {el: {} for el in cfgs}

    def fingerprint(el: str, box: float) -> str:
        return _fingerprint(cfgs[el], el, box, Path(pseudopotentials[el]))

    outcomes: dict[str, BoxCheck] = {}
    while len(outcomes) < len(cfgs):
        jobs: list[tuple[str, float, str]] = []
        for el in cfgs:
            if el in outcomes:
                continue
            energies = {b: lab["energy"] for b, lab in labels[el].items()}
            missing, outcome = box_search(first, step, largest, energies, tolerance)
            if outcome is not None:
                outcomes[el] = outcome
            for box in missing:
                fp = fingerprint(el, box)
                if fp in cached:
                    labels[el][box] = cached[fp]
                else:
                    jobs.append((el, box, fp))
        if not jobs:
            continue
        if say is not None:
            say(
                "autopipec: labelling isolated atoms with pw.x (box check of "
                "trainer.reference_box): " + ", ".join(f"{el} in {box:g} Å" for el, box, _ in jobs)
            )
        done = label_isolated_atoms(
            [
                (cfgs[el], el, Path(pseudopotentials[el]), box, folder / el / fp)
                for el, box, fp in jobs
            ],
            run,
        )
        errors: list[TrainerError] = []
        for (el, box, fp), result in zip(jobs, done, strict=True):
            try:
                label = _box_label(el, box, cfgs[el], result, folder / el / fp, run_dir, fp)
            except TrainerError as exc:  # the other boxes of the batch are kept first
                errors.append(exc)
                continue
            labels[el][box] = cached[fp] = label
            records[el] = {"element": el, "labels": _merged(records.get(el), labels[el])}
        atomic_write_json(record_path, records)
        if errors:
            raise errors[0]

    out: dict[str, dict[str, Any]] = {}
    for el, outcome in outcomes.items():
        used = labels[el][outcome.used]
        series = [float(labels[el][b]["energy"]) for b in outcome.boxes]
        convergence: dict[str, Any] = {
            "boxes_ang": list(outcome.boxes),
            "energies_ev": series,
            "checked_box_ang": outcome.checked,
            "used_box_ang": outcome.used,
            "difference_mev": outcome.difference_ev * 1000.0,
            "tolerance_mev": tolerance * 1000.0,
            "converged": outcome.converged,
        }
        if not outcome.converged:
            shown = ", ".join(
                f"{b:g} Å {e:.5f} eV" for b, e in zip(outcome.boxes, series, strict=True)
            )
            raise TrainerError(
                f"trainer.reference isolated_atoms: the isolated {el} atom's energy is not "
                f"converged with the box: E({outcome.used:g} Å) - E({outcome.checked:g} Å) = "
                f"{convergence['difference_mev']:.2f} meV > reference_box_tolerance "
                f"{convergence['tolerance_mev']:g} meV ({shown}); raise "
                "trainer.reference_box_max or reference_box_tolerance"
            )
        out[el] = {
            "element": el,
            **{k: v for k, v in used.items() if k != "box"},
            "box_convergence": convergence,
            "labels": _merged(records.get(el), labels[el]),
        }
        records[el] = out[el]
    if records != (json.loads(record_path.read_text()) if record_path.is_file() else None):
        atomic_write_json(record_path, records)
    return out


def _merged(record: Any, labels: Mapping[float, dict[str, Any]]) -> list[dict[str, Any]]:
    """The boxes of this search and those an earlier search recorded for the element (no
    labelled box is forgotten), by edge."""
    merged = _cached_labels({"old": record}) if isinstance(record, Mapping) else {}
    merged.update({str(lab["fingerprint"]): lab for lab in labels.values()})
    return sorted(merged.values(), key=lambda lab: (float(lab["box"]), str(lab["fingerprint"])))


def reference_summary(records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What ``potential.json`` (``baseline.isolated_atoms``) records of the references of
    :func:`isolated_atom_references`: per element the energy, moment, theory key, where
    pw.x ran and the box convergence (boxes, energies, difference, tolerance)."""
    return {
        "record": f"{REFERENCE_DIR}/{RECORD_FILE}",
        "elements": {
            el: {
                "energy": r["energy"],
                "total_magmom": r["total_magmom"],
                "theory_key": r["theory_key"],
                "execution": r.get("execution"),
                **r["box_convergence"],
            }
            for el, r in records.items()
        },
    }


def training_theory(stores: Sequence[Any], key: str | None) -> dict[str, Any] | None:
    """The theory record of the labels of theory ``key`` (the fitted one), from the final
    converged attempts in ``stores`` (the run store, then the relabel store)."""
    for store in stores:
        for sid in store.ids_in_state("labelled", "trained"):
            for attempt in reversed(store.attempts_of(sid)):
                if attempt.get("failure_class") == "converged":
                    if attempt.get("theory_key") == key and attempt.get("theory"):
                        theory: dict[str, Any] = attempt["theory"]
                        return theory
                    break
    return None
