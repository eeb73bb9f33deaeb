"""Converged DFT settings: the k-point density (and ecutwfc if asked) before labelling.

``oracle.converge`` (recipe)::

    oracle:
      converge:
        energy_mev_per_atom: 1      # tolerance on the energy per atom
        forces_mev_per_ang: 10      # tolerance on every force component
        kspacing: [0.3, 0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06]   # candidates, 1/Å
        ecutwfc: [25, 30, 35, 40]   # optional: converge the cutoff first (Ry)
        ecutwfc_criterion: absolute # or differences (energies relative to the first
                                    # representative's; see _scan_cutoff_differences)
        structures: 2               # representative structures

*Converged* means: for every representative structure, going from its grid (cutoff)
at the chosen value to the next denser grid (larger cutoff) changes the energy per atom
by less than ``energy_mev_per_atom`` and no force component by more than
``forces_mev_per_ang``. Each structure is scanned from coarse to fine until that holds;
the chosen value is the densest of the structures' converged values (a 2-atom cell and
its 8-atom supercell need different spacings: the 8-atom grid changes less often). A
candidate that gives a structure the same grid as the previous one is not recomputed
for it. The cutoff is converged first at the recipe's k-points, then the k-points at
the chosen cutoff. Representatives are the first structure of the
smallest cell and the last structure of the largest (a strained or rattled one, so that
forces are tested too).

The record (chosen values, every calculation, tolerances) is written to
``RUN_DIR/converge.json`` and reused by a rerun with the same inputs. Every structure is
then labelled with the chosen ``kspacing``: each cell gets the grid
``int(|b_i| / kspacing) + 1`` (ASE), i.e. the same density up to rounding up, and every
one of them at least as dense as the converged one.

:func:`kgrid_report` lists the grid and density of each distinct cell (for ``validate``
and ``--dry-run``); :func:`kgrid_warnings` says which cells are coarse.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
from ase import Atoms

from mlip_autopipec.errors import OracleError
from mlip_autopipec.fsutil import atomic_write
from mlip_autopipec.oracle.espresso import EspressoOracle, kspacing_grid, label_serially

CONVERGE_FILE: Final = "converge.json"
CONVERGE_DIR: Final = "converge"
#: k-points per reciprocal atom (n_k1 n_k2 n_k3 x atoms) below which validate warns when
#: the recipe does not converge its k-points: Si at 2x2x2 per 2 atoms (16) is 0.5
#: eV/atom off, 10x10x10 (2000) within 2 meV/atom (measured, PBE, Γ-centred grids).
COARSE_KPPRA: Final = 1000


class KGridRow(NamedTuple):
    """One distinct cell: what it is, its grid, k-points per reciprocal atom, spacing."""

    cell: str
    grid: tuple[int, int, int]
    density: int  # k-points per reciprocal atom: n1 n2 n3 x atoms (equal = same density)
    spacing: float  # achieved spacing max_i |b_i| / n_i, 1/Å (smaller is denser)


def _atoms_and_label(item: Any, index: int) -> tuple[Atoms, str]:
    if isinstance(item, Atoms):
        return item, f"structure {index}"
    return item.atoms, str(getattr(item, "source", f"structure {index}"))


def _describe(atoms: Atoms) -> str:
    lengths = "x".join(f"{x:.3f}" for x in atoms.cell.lengths())
    angles = "/".join(f"{x:.1f}" for x in atoms.cell.angles())
    n = f"{len(atoms)} atom" + ("" if len(atoms) == 1 else "s")
    return f"{atoms.get_chemical_formula()} ({n}, {lengths} Å, {angles}°)"


def achieved_spacing(atoms: Atoms, grid: Sequence[int]) -> float:
    """``max_i |b_i| / n_i`` over periodic directions (1/Å, ASE convention, no 2π)."""
    recip = np.linalg.norm(atoms.cell.reciprocal(), axis=1)
    vals = [recip[i] / grid[i] for i in range(3) if atoms.pbc[i]]
    return float(max(vals)) if vals else 0.0


def kgrid_report(structures: Iterable[Any], kspacing: float) -> list[KGridRow]:
    """The grid ``kspacing`` gives each distinct cell (same shape to 1e-3 Å, same grid).

    ``structures`` are Atoms or SourcedAtoms; strained copies of one cell that get the
    same grid are one row, named after the first of them.
    """
    rows: list[KGridRow] = []
    seen: set[tuple[Any, ...]] = set()
    for i, item in enumerate(structures):
        atoms, label = _atoms_and_label(item, i)
        grid = kspacing_grid(atoms, kspacing)
        key = (atoms.get_chemical_formula(), len(atoms), grid)
        if key in seen:
            continue
        seen.add(key)
        desc = f"{label}: {_describe(atoms)}"
        kppra = int(grid[0] * grid[1] * grid[2] * len(atoms))
        rows.append(KGridRow(desc, grid, kppra, round(achieved_spacing(atoms, grid), 6)))
    return rows


def kgrid_warnings(
    structures: Iterable[Any], kspacing: float, min_density: int = COARSE_KPPRA
) -> list[str]:
    """One warning per distinct cell whose grid is coarse (below ``min_density`` k-points
    per reciprocal atom), and one when cells of one recipe get unequal densities."""
    rows = kgrid_report(structures, kspacing)
    out = [
        f"{r.cell}: kspacing {kspacing} gives a {'x'.join(map(str, r.grid))} grid, "
        f"{r.density} k-points per reciprocal atom (coarse below {min_density}: energies "
        "may be far from converged); converge it with oracle.converge or give a smaller "
        "kspacing"
        for r in rows
        if r.density < min_density
    ]
    densities = sorted({r.density for r in rows})
    if len(densities) > 1 and densities[-1] > 1.5 * densities[0]:
        out.append(
            f"kspacing {kspacing} gives these cells k-point densities from {densities[0]} to "
            f"{densities[-1]} per reciprocal atom: unless converged, the same crystal in two "
            "cells gets different energies per atom"
        )
    return out


# --- convergence -----------------------------------------------------------------------


@dataclass(frozen=True)
class Calculation:
    """One convergence calculation."""

    setting: str  # "kspacing" or "ecutwfc"
    value: float
    structure: int  # index among the representatives
    grid: tuple[int, int, int] | None
    energy_per_atom: float | None  # eV
    forces: list[list[float]] | None  # eV/Å
    ok: bool
    message: str
    theory_key: str | None = None


def representatives(structures: Sequence[Any], count: int) -> list[int]:
    """Indices of the structures convergence is tested on (see the module docstring)."""
    if not structures or count <= 0:
        return []
    sizes = [len(_atoms_and_label(s, i)[0]) for i, s in enumerate(structures)]
    smallest = sizes.index(min(sizes))
    largest = len(sizes) - 1 - sizes[::-1].index(max(sizes))
    picks = [smallest, largest]
    # further ones: spread over the list
    for i in np.linspace(0, len(sizes) - 1, num=max(count, 2)).astype(int).tolist():
        picks.append(int(i))
    out: list[int] = []
    for i in picks:
        if i not in out:
            out.append(i)
    return out[:count]


def _fingerprint(
    oracle_cfg: Mapping[str, Any],
    pseudopotentials: Mapping[str, Path],
    atoms_list: Sequence[Atoms],
    settings: Mapping[str, Any],
) -> str:
    h = hashlib.sha256()
    cfg = {k: v for k, v in oracle_cfg.items() if k not in ("converge", "timeout", "command")}
    h.update(json.dumps([cfg, dict(settings)], sort_keys=True, default=str).encode())
    for el in sorted(pseudopotentials):
        h.update(el.encode() + Path(pseudopotentials[el]).read_bytes())
    for a in atoms_list:
        h.update(np.round(a.positions, 6).tobytes() + np.round(a.cell.array, 6).tobytes())
        h.update(" ".join(a.get_chemical_symbols()).encode())
        h.update(np.round(a.get_initial_magnetic_moments(), 6).tobytes())
    return h.hexdigest()


def _with(oracle_cfg: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(dict(oracle_cfg))
    cfg.pop("converge", None)
    # forces are part of the convergence test (a recipe always computes them anyway)
    cfg.setdefault("input_data", {}).setdefault("control", {})["tprnfor"] = True
    if "kspacing" in changes:
        cfg.pop("kpts", None)
        cfg["kspacing"] = float(changes["kspacing"])
    if "ecutwfc" in changes:
        system = cfg.setdefault("input_data", {}).setdefault("system", {})
        old = system.get("ecutwfc")
        new = float(changes["ecutwfc"])
        if system.get("ecutrho") is not None and old:
            # keep the recipe's density-to-wavefunction cutoff ratio
            system["ecutrho"] = float(system["ecutrho"]) * new / float(old)
        system["ecutwfc"] = new
    return cfg


def _with_one(oracle_cfg: Mapping[str, Any], setting: str, value: float) -> dict[str, Any]:
    return _with(oracle_cfg, **{setting: value})


def _calc(
    cfg: Mapping[str, Any],
    pseudopotentials: Mapping[str, Path],
    setting: str,
    value: float,
    index: int,
    atoms: Atoms,
    workdir: Path,
) -> Calculation:
    oracle = EspressoOracle(cfg, pseudopotentials)
    history = label_serially(oracle, f"converge-{index}", atoms, workdir)
    last = history[-1]
    grid = last.kgrid
    if not last.ok or last.energy is None:
        return Calculation(setting, value, index, grid, None, None, False, last.message)
    forces = None if last.forces is None else np.asarray(last.forces).tolist()
    energy = float(last.energy) / len(atoms)
    return Calculation(
        setting, value, index, grid, energy, forces, True, last.message, last.theory_key
    )


@dataclass(frozen=True)
class _ScanJob:
    """What a scan works on: the representatives, their pseudopotentials, the folder of the
    calculations, the tolerances (meV/atom, meV/Å) and the list every calculation joins."""

    atoms_list: Sequence[Atoms]
    pseudopotentials: Mapping[str, Path]
    workdir: Path
    tol_e: float
    tol_f: float
    calcs: list[Calculation]

    def run(
        self,
        cfg: Mapping[str, Any],
        setting: str,
        value: float,
        index: int,
        grid: tuple[int, int, int] | None = None,
    ) -> Calculation:
        """:func:`_calc` of representative ``index`` in ``<setting>-<value>/structure-<index>``,
        recorded; a failed calculation stops the scan (:class:`OracleError`)."""
        c = _calc(
            cfg,
            self.pseudopotentials,
            setting,
            value,
            index,
            self.atoms_list[index],
            self.workdir / f"{setting}-{value:g}" / f"structure-{index}",
        )
        if grid is not None:
            c = replace(c, grid=grid)
        self.calcs.append(c)
        if not c.ok:
            raise OracleError(
                f"oracle.converge: {setting} {value:g} on representative structure {index} "
                f"failed: {c.message}"
            )
        return c


def _differences(a: Calculation, b: Calculation) -> tuple[float, float]:
    """(|ΔE| meV/atom, max |ΔF| meV/Å) between two calculations of one structure."""
    assert a.energy_per_atom is not None and b.energy_per_atom is not None
    de = abs(a.energy_per_atom - b.energy_per_atom) * 1000
    df = 0.0
    if a.forces is not None and b.forces is not None:
        df = float(np.max(np.abs(np.asarray(a.forces) - np.asarray(b.forces)))) * 1000
    return de, df


def _scan(
    setting: str,
    candidates: Sequence[float],
    cfg_for: Any,
    job: _ScanJob,
) -> tuple[float | None, list[dict[str, Any]]]:
    """Walk the candidates (coarse to fine) structure by structure.

    Each structure is converged at the first candidate that the next one giving it a
    different calculation (another grid, a larger cutoff) does not change beyond the
    tolerances; candidates that give it the same grid again are not recomputed and not
    compared (a cell whose grid did not change proves nothing). The answer is the value
    every structure is converged at: the smallest spacing (largest cutoff) among them.
    Returns it (None: some structure never converged) and one row per compared pair.
    """
    done: dict[int, float] = {}
    last: dict[int, Calculation] = {}
    pairs: list[dict[str, Any]] = []
    for value in candidates:
        cfg = cfg_for(value)
        for i, atoms in enumerate(job.atoms_list):
            if i in done:
                continue
            grid = kspacing_grid(atoms, float(value)) if setting == "kspacing" else None
            prev = last.get(i)
            if grid is not None and prev is not None and prev.grid == grid:
                continue  # the same calculation again
            c = job.run(cfg, setting, float(value), i, grid)
            last[i] = c
            if prev is None:
                continue
            if setting == "kspacing" and prev.theory_key != c.theory_key:
                # e.g. the retry ladder added smearing to one of them
                raise OracleError(
                    f"oracle.converge: kspacing {prev.value:g} and {c.value:g} were computed "
                    f"with different theories on representative structure {i} "
                    f"({prev.theory_key} / {c.theory_key}): fix the recipe's settings "
                    "(e.g. smearing for a metal) so that every cell converges as given"
                )
            de, df = _differences(prev, c)
            ok = de < job.tol_e and df < job.tol_f
            pairs.append(
                {
                    "structure": i,
                    "from": prev.value,
                    "to": float(value),
                    "grids": None if grid is None else [list(prev.grid or ()), list(grid)],
                    "delta_energy_mev_per_atom": round(de, 4),
                    "delta_forces_mev_per_ang": round(df, 4),
                    "converged": ok,
                }
            )
            if ok:
                # converged: refining further changes nothing beyond the tolerances
                done[i] = prev.value
        if len(done) == len(job.atoms_list):
            chosen = min(done.values()) if setting == "kspacing" else max(done.values())
            return chosen, pairs
    return None, pairs


def _scan_cutoff_differences(
    candidates: Sequence[float],
    cfg_for: Any,
    job: _ScanJob,
) -> tuple[float | None, list[dict[str, Any]]]:
    """The cutoff scan with ``ecutwfc_criterion: differences``.

    Every representative is computed at every candidate (upward); a cutoff is converged
    when, going to the next one, the energy per atom of each representative *relative to
    the first* changes by less than ``tol_e`` and no force component of any of them by
    more than ``tol_f``. The absolute energy per atom may still move: a too-low cutoff
    shifts every cell's energy by nearly the same amount, which a potential fitted with
    fitted reference energies does not see (measured on the quickstart cells, 30 -> 45 Ry:
    absolute -4.2 to -6.1 meV/atom, differences within 1.96). Returns (value or None,
    one row per representative and compared pair).
    """
    pairs: list[dict[str, Any]] = []
    prev: list[Calculation] | None = None
    for value in candidates:
        cfg = cfg_for(value)
        now: list[Calculation] = []
        for i in range(len(job.atoms_list)):
            now.append(job.run(cfg, "ecutwfc", float(value), i))
        if prev is not None:
            all_ok = True
            ref_a, ref_b = prev[0].energy_per_atom, now[0].energy_per_atom
            for i, (a, b) in enumerate(zip(prev, now, strict=True)):
                dabs, df = _differences(a, b)  # asserts both energies are there
                assert ref_a is not None and ref_b is not None
                assert a.energy_per_atom is not None and b.energy_per_atom is not None
                de = abs((a.energy_per_atom - ref_a) - (b.energy_per_atom - ref_b)) * 1000
                ok = de < job.tol_e and df < job.tol_f
                all_ok = all_ok and ok
                pairs.append(
                    {
                        "structure": i,
                        "from": a.value,
                        "to": float(value),
                        "grids": None,
                        "delta_energy_mev_per_atom": round(dabs, 4),
                        "delta_energy_difference_mev_per_atom": round(de, 4),
                        "delta_forces_mev_per_ang": round(df, 4),
                        "converged": ok,
                    }
                )
            if all_ok:
                return prev[0].value, pairs
        prev = now
    return None, pairs


def converge_settings(
    oracle_cfg: Mapping[str, Any],
    pseudopotentials: Mapping[str, Path],
    structures: Sequence[Any],
    run_dir: Path,
) -> dict[str, Any]:
    """Converge ``kspacing`` (and ``ecutwfc`` if candidates are given) with real pw.x runs.

    ``oracle_cfg`` is the recipe's ``oracle`` section with ``converge`` filled in;
    ``structures`` the recipe's structures (Atoms or SourcedAtoms). Writes and returns
    the record (``RUN_DIR/converge.json``); a record made from the same inputs is reused.
    Raises :class:`OracleError` when a calculation fails or no candidate converges.
    """
    settings = dict(oracle_cfg.get("converge") or {})
    tol_e = float(settings["energy_mev_per_atom"])
    tol_f = float(settings["forces_mev_per_ang"])
    # only structures pw.x can run (no overlapping atoms, every pseudopotential present)
    checker = EspressoOracle(_with(oracle_cfg), pseudopotentials)
    usable = [
        s for i, s in enumerate(structures) if checker.preflight(_atoms_and_label(s, i)[0]) is None
    ]
    if not usable:
        raise OracleError("oracle.converge: no structure passes the preflight checks")
    picks = representatives(usable, int(settings["structures"]))
    atoms_list = [_atoms_and_label(usable[i], i)[0] for i in picks]
    labels = [_atoms_and_label(usable[i], i)[1] for i in picks]
    criterion = str(settings.pop("ecutwfc_criterion", None) or "absolute")
    by_differences = criterion == "differences" and bool(settings.get("ecutwfc"))
    if by_differences:
        if len(atoms_list) < 2:
            raise OracleError(
                "oracle.converge: ecutwfc_criterion 'differences' compares the "
                "representatives' energies with each other and needs two or more; "
                f"there is {len(atoms_list)} (raise oracle.converge.structures, or give "
                "more distinct structures, or use 'absolute')"
            )
        # only when not the default, so that records made before the key existed stay valid
        settings["ecutwfc_criterion"] = criterion
    fingerprint = _fingerprint(oracle_cfg, pseudopotentials, atoms_list, settings)
    path = Path(run_dir) / CONVERGE_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("fingerprint") == fingerprint:
            return old
    workdir = Path(run_dir) / CONVERGE_DIR
    calcs: list[Calculation] = []
    record: dict[str, Any] = {
        "fingerprint": fingerprint,
        "tolerance": {"energy_mev_per_atom": tol_e, "forces_mev_per_ang": tol_f},
        "representatives": labels,
        "meaning": "for every representative, the next denser grid (larger cutoff) than "
        "the chosen value's changes the energy and forces by less than the tolerances",
    }
    if by_differences:
        record["ecutwfc_criterion"] = criterion
        record["meaning_ecutwfc"] = (
            "the next larger cutoff changes every representative's energy per atom "
            "relative to the first representative's, and every force, by less than the "
            "tolerances (absolute energies may move more)"
        )
    # (setting, candidates coarse to fine, what did not converge, what to do); the cutoff
    # first (at the recipe's k-points), then the k-points at the chosen cutoff
    scans = (
        (
            "ecutwfc",
            sorted(float(e) for e in settings.get("ecutwfc") or []),
            "ecutwfc did not converge within {} Ry",
            "add larger cutoffs",
        ),
        (
            "kspacing",
            sorted((float(k) for k in settings["kspacing"]), reverse=True),
            "the k-point density did not converge within kspacing {} 1/Å",
            "add smaller kspacing values",
        ),
    )
    base = dict(oracle_cfg)
    for setting, candidates, what, hint in scans:
        if setting == "ecutwfc" and not candidates:
            continue  # the cutoff is converged only when asked
        job = _ScanJob(atoms_list, pseudopotentials, workdir, tol_e, tol_f, calcs)
        cfg_for = partial(_with_one, base, setting)
        if setting == "ecutwfc" and by_differences:
            value, pairs = _scan_cutoff_differences(candidates, cfg_for, job)
        else:
            value, pairs = _scan(setting, candidates, cfg_for, job)
        record[f"{setting}_steps"] = pairs
        if value is None:
            raise OracleError(
                f"oracle.converge: {what.format(candidates)} "
                f"(tolerances {tol_e} meV/atom, {tol_f} meV/Å); {hint}"
            )
        record[setting] = value
        base = _with(base, **{setting: value})
    kspacing = float(record["kspacing"])
    record["grids"] = {
        lab: list(kspacing_grid(a, kspacing)) for lab, a in zip(labels, atoms_list, strict=True)
    }
    record["calculations"] = [asdict(c) for c in calcs]
    text = json.dumps(record, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    out: dict[str, Any] = json.loads(text)  # exactly what a rerun reads back
    return out


def apply_converged(oracle_cfg: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """The ``oracle`` section every structure is labelled with: the chosen ``kspacing``
    (a fixed ``kpts`` is dropped) and, when converged, ``ecutwfc`` (``ecutrho`` keeps
    its ratio)."""
    changes: dict[str, Any] = {"kspacing": record["kspacing"]}
    if record.get("ecutwfc") is not None:
        changes["ecutwfc"] = record["ecutwfc"]
    return _with(oracle_cfg, **changes)


def converged_oracle_cfg(
    oracle_cfg: Mapping[str, Any],
    pseudopotentials: Mapping[str, Path],
    structures: Sequence[Any],
    run_dir: Path,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(oracle section to label with, convergence record or None) for the pipeline.

    Without ``oracle.converge`` the section is returned unchanged (as a copy).
    """
    if not oracle_cfg.get("converge"):
        return copy.deepcopy(dict(oracle_cfg)), None
    record = converge_settings(oracle_cfg, pseudopotentials, structures, run_dir)
    return apply_converged(oracle_cfg, record), record
