"""check_recipe / load_recipe: schema validation, then the checks the schema cannot express."""

from __future__ import annotations

import copy
import math
import re
import shlex
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
from ase import Atoms
from ase.io.espresso import kspacing_to_grid
from ase.neighborlist import neighbor_list

from mlip_autopipec.errors import Diagnostic, RecipeError
from mlip_autopipec.oracle.ladder import (
    DEFAULT_LADDERS,
    PW_DEFAULTS,
    STARTINGPOT_KEY,
    apply_step,
    base_params,
    nest_input,
    validate_ladders,
)
from mlip_autopipec.recipe import namelists, pseudo
from mlip_autopipec.recipe._yaml import Path_, Positions, YamlLoadError, load_yaml
from mlip_autopipec.recipe.model import Recipe, SourcedAtoms
from mlip_autopipec.recipe.schema import (
    dotted,
    fill_defaults,
    invalid_sections,
    load_schema,
    non_finite_message,
    schema_default,
    schema_diagnostics,
)
from mlip_autopipec.recipe.structures import (
    FILE_KINDS,
    EntryCheck,
    _full_path,
    bulk_base,
    check_entry,
    kind_of,
)

#: pw.x refuses ecutrho <= ecutwfc and warns below 4 × ecutwfc (norm-conserving minimum).
_ECUTRHO_FACTOR_DEFAULT = 8.0
#: Above this many structures validation warns (strain/rattle counts multiply).
MANY_STRUCTURES = 5000
#: Å^3 per atom below which a cell is certainly not a real material (and neighbor lists explode).
MIN_VOLUME_PER_ATOM = 1.0
_SECTIONS = ("control", "system", "electrons", "ions", "cell")


class _Checker:
    def __init__(self, display: str, pos: Positions, base_dir: Path):
        self.display = display
        self.pos = pos
        self.base_dir = base_dir
        self.out: list[Diagnostic] = []
        #: each entry built once (by index), for the structure and the k-grid checks
        self.checks: dict[int, EntryCheck] = {}
        #: one cell per structure source (unrattled), labelled, for the k-grid and cost hints
        self.cells: list[tuple[str, Atoms]] = []

    def add(self, path: Path_, message: str, *, key: bool = False, warning: bool = False) -> None:
        line, col = self.pos.at(path, key=key)
        suffix = f" (at {dotted(path)})" if path else ""
        self.out.append(
            Diagnostic(self.display, line, col, message + suffix, "warning" if warning else "error")
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_cell(c: _Checker, path: Path_, what: str, atoms: Atoms, min_distance: float) -> None:
    if len(atoms) == 0:
        c.add(path, f"{what} has no atoms")
        return
    if abs(atoms.cell.volume) < 1e-6:
        c.add(path, f"{what} has no 3D cell; pw.x needs a periodic cell (set one in the file)")
        return
    if abs(atoms.cell.volume) / len(atoms) < MIN_VOLUME_PER_ATOM:
        c.add(
            path,
            f"{what} has {abs(atoms.cell.volume) / len(atoms):.3g} Å^3 per atom: "
            "not a physical cell (units must be Å)",
        )
        return
    if min_distance > 0 and len(atoms) > 0:
        d = neighbor_list("d", atoms, min_distance, self_interaction=False)
        if len(d):
            c.add(
                path,
                f"{what} has atoms {float(np.min(d)):.2f} Å apart (< oracle.min_distance "
                f"{min_distance}); it will be quarantined as overlapping_atoms, not run",
                warning=True,
            )


def _supercell_factor(sc: Any) -> int:
    """How many copies of the cell a ``supercell`` spec makes (0 for a singular matrix)."""
    if sc and isinstance(sc[0], list):
        return round(abs(float(np.linalg.det(np.array(sc, dtype=float)))))
    return int(np.prod([int(n) for n in sc])) if sc else 1


def _too_many_atoms(entry: dict[str, Any], max_atoms: int) -> tuple[Path_, str] | None:
    """(where, why) when an entry's supercells would exceed ``max_atoms``, counted before
    anything is built (a ``bulk`` unit cell is cheap; any other cell has at least 1 atom)."""
    outer = _supercell_factor(entry.get("supercell"))
    spec = entry.get("bulk")
    if isinstance(spec, dict):
        try:
            unit = len(bulk_base({**spec, "supercell": [1, 1, 1]}))
        except Exception:  # noqa: BLE001 - check_entry reports an impossible crystal
            return None
        inner = _supercell_factor(spec.get("supercell"))
        n_atoms = unit * inner * outer
        if n_atoms > max_atoms:
            where: Path_ = ("bulk", "supercell") if "supercell" in spec else ("supercell",)
            return where, (
                f"this cell has {n_atoms} atoms, above limits.max_atoms ({max_atoms}); pw.x "
                "labels of cells this large take days: use a smaller supercell, or raise "
                "limits.max_atoms if intended"
            )
        return None
    if outer > max_atoms:
        return ("supercell",), (
            f"this supercell makes {outer} copies of the cell, above limits.max_atoms "
            f"({max_atoms}); use a smaller supercell, or raise limits.max_atoms if intended"
        )
    return None


def _file_problem(full: Path, shown: str, max_mb: float) -> str | None:
    """Why a structure file must not be read (without opening it: a FIFO would block)."""
    try:
        info = full.stat()
    except FileNotFoundError:
        return f"structure file {shown!r} not found ({full})"
    except OSError as exc:
        return f"cannot access structure file {shown!r}: {exc.strerror or type(exc).__name__}"
    if stat.S_ISDIR(info.st_mode):
        return f"structure file {shown!r} is a directory"
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "not a regular file"
        )
        return f"structure file {shown!r} is {kind}, not a regular file: give a file on disk"
    if info.st_size > max_mb * 1e6:
        return (
            f"structure file {shown!r} is {info.st_size / 1e6:.1f} MB, above limits.max_file_mb "
            f"({max_mb:g} MB); raise limits.max_file_mb if it really is a structure file"
        )
    return None


def _check_structures(
    c: _Checker, entries: list[dict[str, Any]], min_distance: float, limits: dict[str, Any]
) -> dict[str, list[int]] | None:
    """Elements -> indices of the entries using them; None if some entry failed."""
    elements: dict[str, list[int]] = {}
    ok = True
    total = 0
    total_atoms = 0
    max_atoms = int(limits["max_atoms"])
    for i, entry in enumerate(entries):
        path: Path_ = ("structures", i)
        if kind_of(entry) in FILE_KINDS:
            kind = kind_of(entry)
            problem = _file_problem(
                _full_path(entry[kind], c.base_dir), str(entry[kind]), float(limits["max_file_mb"])
            )
            if problem:
                c.add((*path, kind), problem)
                ok = False
                continue
        too_big = _too_many_atoms(entry, max_atoms)
        if too_big is not None:
            # refused before make_supercell allocates 10^8 atoms
            c.add((*path, *too_big[0]), too_big[1])
            ok = False
            continue
        checked = c.checks[i] = check_entry(i, entry, c.base_dir)
        for where, message, key in checked.problems:
            c.add((*path, *where), message, key=key)
            ok = False
        big = [(what, len(a)) for what, a in checked.cells if len(a) > max_atoms]
        if big:
            what, n_atoms = big[0]
            c.add(
                (*path, kind_of(entry)),
                f"{what} has {n_atoms} atoms, above limits.max_atoms ({max_atoms}); pw.x "
                "labels of cells this large take days: raise limits.max_atoms if intended",
            )
            ok = False
            continue
        for what, atoms in checked.cells:
            _check_cell(c, (*path, kind_of(entry)), what, atoms, min_distance)
        copies = checked.count // max(1, len(checked.structures))
        total_atoms += copies * sum(len(a) for a in checked.structures)
        c.cells.extend(
            (f"structures[{i}]" + (f" #{n}" if n else ""), a)
            for n, a in enumerate(checked.structures)
        )
        total += checked.count
        for atoms in checked.structures:
            for symbol in set(atoms.get_chemical_symbols()):
                if i not in elements.setdefault(symbol, []):
                    elements[symbol].append(i)
    if total_atoms > int(limits["max_total_atoms"]):
        c.add(
            ("structures",),
            f"the structures have {total_atoms} atoms in all (strains and rattled copies "
            f"included), above limits.max_total_atoms ({limits['max_total_atoms']}); raise "
            "limits.max_total_atoms if intended",
            key=True,
        )
        ok = False
    if total > MANY_STRUCTURES:
        c.add(
            ("structures",),
            f"{total} structures to label: is that intended?",
            key=True,
            warning=True,
        )
    return elements if ok else None


def _grid(atoms: Atoms, kspacing: float) -> str:
    return _grid_text(atoms, kspacing)


def _check_kgrid_consistency(
    c: _Checker, entries: list[dict[str, Any]], oracle: dict[str, Any]
) -> None:
    """Warn when ``kspacing`` gives different k-grids to cells of one family.

    The grid is a step function of the cell: across a strain range it can switch (say from
    3x3x3 to 2x2x2) in the middle, and with a coarse grid the energies jump there by far
    more than the fit error (0.85 eV/atom was seen for SiC at kspacing 0.2). A potential
    fitted on such labels learns the jump. Families: the strained cells of one ``bulk``
    entry; the frames of one file with the same composition.
    """
    kspacing = oracle.get("kspacing")
    if oracle.get("kpts") is not None or not isinstance(kspacing, int | float) or kspacing <= 0:
        return
    for i in range(len(entries)):
        checked = c.checks.get(i)
        if checked is None or checked.problems:
            continue  # the structure checks already reported it
        where: Path_ = ("structures", i, *checked.where)
        families = {
            name: [(label, _grid(atoms, kspacing)) for label, atoms in members]
            for name, members in checked.families.items()
        }
        for formula, grids in families.items():
            distinct = sorted({g for _, g in grids})
            if len(distinct) < 2:
                continue
            examples = ", ".join(
                f"{g} ({next(label for label, gg in grids if gg == g)})" for g in distinct
            )
            what = f" {formula} cells" if formula else " cells"
            c.add(
                where,
                f"oracle.kspacing {kspacing} gives these{what} different k-point grids: "
                f"{examples}; energies jump where the grid changes and the fit learns the "
                "jump. Use a smaller kspacing (converged for the smallest cell) or fixed "
                "oracle.kpts",
                warning=True,
            )


def _check_physics(
    c: _Checker, entries: list[dict[str, Any]], oracle: dict[str, Any], elements: Any
) -> None:
    """Per-site magmoms that do not fit a cell (error: the run would fail), usually
    magnetic elements given no moment, and coarse k-point grids per distinct cell when the
    recipe does not converge them (oracle/magnetism.py, oracle/converge.py)."""
    from mlip_autopipec.oracle.converge import kgrid_warnings
    from mlip_autopipec.oracle.magnetism import magmom_problem, unset_magnetic_elements

    cells: list[SourcedAtoms] = []
    own: set[str] = set()  # elements a file already gives a non-zero moment
    for i, entry in enumerate(entries):
        checked = c.checks.get(i)
        if checked is None or checked.problems:
            continue  # the structure checks already reported it
        named = [
            (f"structures[{i}]" + (f" #{n}" if n else ""), a)
            for n, a in enumerate(checked.structures)
        ]
        for _, atoms in named:
            problem = magmom_problem(entry.get("magmoms"), len(atoms))
            if problem is not None:
                c.add(("structures", i, "magmoms"), problem)
                break
            if "file" in entry:
                moments = atoms.get_initial_magnetic_moments()
                symbols = atoms.get_chemical_symbols()
                own |= {s for s, m in zip(symbols, moments, strict=True) if m}
        cells.extend(SourcedAtoms(label, a) for label, a in named if a.cell.rank == 3)
    missing = [e for e in unset_magnetic_elements(list(elements), entries, oracle) if e not in own]
    if missing:
        c.add(
            ("oracle",),
            f"no initial magnetic moment for {', '.join(missing)}: computed spin-unpolarised; "
            "give oracle.magnetism.default_moments (μB) or a structure's magmoms",
            warning=True,
        )
    kspacing = oracle.get("kspacing")
    if oracle.get("converge") or oracle.get("kpts") is not None:
        return
    if isinstance(kspacing, int | float) and not isinstance(kspacing, bool) and kspacing > 0:
        for warning in kgrid_warnings(cells, float(kspacing)):
            c.add(("oracle", "kspacing"), warning, warning=True)


#: k-point spacings (1/Å) outside which validate explains the unit; converged labels of
#: crystals need about 0.1-0.3.
KSPACING_TYPICAL = (0.1, 0.3)
KSPACING_COARSE = 1.0
_MAX_SHOWN_CELLS = 6


def _grid_text(atoms: Atoms, kspacing: float) -> str:
    """ASE's ``kspacing_to_grid`` as text, for any positive spacing (1e-320 overflows)."""
    recip = np.linalg.norm(np.asarray(atoms.cell.reciprocal()), axis=1)
    log_n = [
        math.log10(r) - math.log10(kspacing) if atoms.pbc[k] and r > 0 else 0.0
        for k, r in enumerate(recip)
    ]
    if max(log_n) < 5:
        return "x".join(str(int(g)) for g in kspacing_to_grid(atoms, kspacing))
    return f"about 10^{int(sum(max(0.0, x) for x in log_n))} k-points"


def _check_kspacing(c: _Checker, oracle: dict[str, Any]) -> None:
    """Teach the unit of ``oracle.kspacing`` when it is far from a sensible value.

    ASE's kspacing is in 1/Å without 2π (``int(|b_i| / kspacing) + 1`` points along b_i):
    users coming from VASP's KSPACING (with 2π) or a k-point density get it wrong by 6x
    or more, so the message shows the grid every distinct cell would get.
    """
    kspacing = oracle.get("kspacing")
    if oracle.get("kpts") is not None or not _real(kspacing) or kspacing <= 0:
        return
    if 0.01 <= kspacing <= KSPACING_COARSE or not c.cells:
        return
    seen: dict[tuple[str, str], str] = {}
    for label, atoms in c.cells:
        if atoms.cell.rank != 3:
            continue
        key = (atoms.get_chemical_formula(), _grid_text(atoms, kspacing))
        seen.setdefault(key, label)
    shown = [f"{grid} for {label} ({formula})" for (formula, grid), label in seen.items()]
    more = len(shown) - _MAX_SHOWN_CELLS
    listing = "; ".join(shown[:_MAX_SHOWN_CELLS]) + (f"; and {more} more" if more > 0 else "")
    typical = ", ".join(
        f"{_grid_text(atoms, 0.2)} for {label}"
        for label, atoms in c.cells[:2]
        if atoms.cell.rank == 3
    )
    unit = (
        f"oracle.kspacing is a spacing in 1/Å, ASE's convention without 2π (points along "
        f"b_i: int(|b_i| / kspacing) + 1); {kspacing!r} gives {listing}"
    )
    if kspacing > KSPACING_COARSE:
        c.add(
            ("oracle", "kspacing"),
            f"{unit}. Labels need about {KSPACING_TYPICAL[0]}-{KSPACING_TYPICAL[1]} "
            f"(0.2 gives {typical}); a VASP KSPACING (with 2π) divides by 2π here "
            f"(VASP 0.5 = {0.5 / (2 * np.pi):.2f}); fixed grids go in oracle.kpts",
            warning=kspacing <= 10,
        )
    else:
        c.add(
            ("oracle", "kspacing"),
            f"{unit}: far too many k-points for pw.x; the smallest accepted spacing is 0.01 "
            f"(labels need about {KSPACING_TYPICAL[0]}-{KSPACING_TYPICAL[1]}: 0.2 gives "
            f"{typical})",
        )


#: Atoms × k-points (full Monkhorst-Pack grid) × (ecutwfc / 30 Ry)^1.5 above which one label
#: is very expensive: a 2-atom Si cell at kspacing 0.15 and 30 Ry is 54; 20 000 is a
#: 64-atom cell with a 7x7x7 grid, hours of pw.x on a few cores.
COSTLY_LABEL = 20_000


def _check_cost(c: _Checker, oracle: dict[str, Any]) -> None:
    """Warn about labels whose size (atoms × k-points × cutoff) makes pw.x very slow."""
    kspacing, kpts = oracle.get("kspacing"), oracle.get("kpts")
    ecutwfc = (
        (oracle.get("input_data") or {})
        .get("system", {})
        .get("ecutwfc", schema_default("oracle", "input_data", "system", "ecutwfc"))
    )
    if not _real(ecutwfc) or ecutwfc <= 0:
        return
    worst: tuple[float, str, Atoms, str] | None = None
    for label, atoms in c.cells:
        if atoms.cell.rank != 3:
            continue
        if isinstance(kpts, list) and all(isinstance(k, int) for k in kpts) and len(kpts) == 3:
            grid = [int(k) for k in kpts]
        elif _real(kspacing) and 0.01 <= kspacing <= 10:
            grid = [int(g) for g in kspacing_to_grid(atoms, kspacing)]
        else:
            return
        cost = len(atoms) * float(np.prod(grid)) * (float(ecutwfc) / 30.0) ** 1.5
        if cost > COSTLY_LABEL and (worst is None or cost > worst[0]):
            worst = (cost, label, atoms, "x".join(map(str, grid)))
    if worst is not None:
        cost, label, atoms, grid_text = worst
        c.add(
            ("oracle", "kpts") if kpts is not None else ("oracle", "kspacing"),
            f"{label} ({atoms.get_chemical_formula()}, {len(atoms)} atoms) gets a {grid_text} "
            f"k-point grid at ecutwfc {ecutwfc:g} Ry: about {cost:,.0f} atom·k-points, a very "
            f"expensive label (above {COSTLY_LABEL:,}); is the grid denser than needed?",
            warning=True,
        )


def _non_finite(data: Any, path: Path_ = ()) -> list[tuple[Path_, float]]:
    """Every .nan/.inf in the loaded recipe, with its path."""
    if isinstance(data, float) and not math.isfinite(data):
        return [(path, data)]
    if isinstance(data, dict):
        return [hit for k, v in data.items() for hit in _non_finite(v, (*path, k))]
    if isinstance(data, list):
        return [hit for i, v in enumerate(data) for hit in _non_finite(v, (*path, i))]
    return []


def _check_elements(c: _Checker, raw: dict[str, Any], elements: dict[str, list[int]]) -> None:
    given = raw.get("trainer", {}).get("elements")
    if given is None:
        return
    path: Path_ = ("trainer", "elements")
    for symbol in sorted(set(elements) - set(given)):
        c.add(
            path,
            f"trainer.elements lacks {symbol!r}, which is in structures[{elements[symbol][0]}]",
        )
    for k, symbol in enumerate(given):
        if symbol not in elements:
            c.add((*path, k), f"element {symbol!r} is in none of the structures")


def _check_reference_box(c: _Checker, raw: dict[str, Any]) -> None:
    """The box check of ``reference: isolated_atoms`` needs a second box within the cap."""
    trainer = raw.get("trainer") or {}
    if trainer.get("reference", schema_default("trainer", "reference")) != "isolated_atoms":
        return
    first, step, largest = (
        float(trainer.get(key, schema_default("trainer", key)))
        for key in ("reference_box", "reference_box_step", "reference_box_max")
    )
    if first + step > largest:
        given = [
            k for k in ("reference_box_max", "reference_box_step", "reference_box") if k in trainer
        ]
        c.add(
            ("trainer", given[0]) if given else ("trainer",),
            f"trainer.reference_box_max {largest:g} Å leaves no box to check the "
            f"reference_box {first:g} Å against (reference_box + reference_box_step = "
            f"{first + step:g} Å)",
        )


def _check_pseudopotentials(
    c: _Checker, oracle: dict[str, Any], elements: dict[str, list[int]]
) -> None:
    pps: dict[str, str] = oracle["pseudopotentials"]
    path: Path_ = ("oracle", "pseudopotentials")
    dirs = pseudo.search_dirs(oracle.get("pseudo_dir"), c.base_dir)
    for symbol in sorted(elements):
        if symbol not in pps:
            have = pseudo.files_for(symbol, dirs)
            hint = (
                f"; files for {symbol} found: {', '.join(have[:3])}"
                if have
                else f"; {pseudo.where_to_get(symbol)}"
            )
            c.add(
                path,
                f"no pseudopotential for {symbol!r} (used by structures[{elements[symbol][0]}])"
                + hint,
                key=True,
            )
    system = oracle.get("input_data", {}).get("system", {})
    ecutwfc = system.get("ecutwfc") if isinstance(system, dict) else None
    headers: dict[str, pseudo.UpfHeader] = {}
    for symbol, entry in pps.items():
        where = (*path, symbol)
        found = pseudo.locate(entry, dirs, c.base_dir)
        if found is None:
            close = [n for n in pseudo.close_names(entry, dirs) if pseudo.element_of(n) == symbol]
            close = close or pseudo.files_for(symbol, dirs)[:1]
            hint = f"; did you mean {close[0]!r}?" if close else f"; {pseudo.where_to_get(symbol)}"
            searched = (
                f"relative to {c.base_dir}"
                if pseudo.is_path(entry)
                else "searched " + ", ".join(str(d) for d in dirs)
            )
            c.add(where, f"pseudopotential {entry!r} not found ({searched}){hint}")
            continue
        try:
            header = pseudo.read_header(found)
        except (OSError, EOFError) as exc:
            c.add(where, f"cannot read pseudopotential {found}: {_short(exc)}")
            continue
        except ValueError as exc:
            c.add(where, f"{found}: {exc}")
            continue
        if header.element is not None and header.element != symbol:
            c.add(where, f"{found.name} is a pseudopotential for {header.element}, not {symbol}")
        if symbol in elements:
            headers[symbol] = header
        if (
            isinstance(ecutwfc, int | float)
            and header.suggested_ecutwfc is not None
            and ecutwfc < header.suggested_ecutwfc
        ):
            c.add(
                where,
                f"ecutwfc {ecutwfc} Ry is below the {header.suggested_ecutwfc:g} Ry suggested by "
                f"{found.name}: fine for testing, converge it for production",
                warning=True,
            )
    # what pw.x would refuse after a run, read from the headers (issue 14.3)
    system = system if isinstance(system, dict) else {}
    if "input_dft" not in system:
        clash = pseudo.functional_conflict(headers)
        if clash is not None:
            c.add(path, clash)
    needs = pseudo.spinorbit_conflict(headers, system.get("lspinorb") is True)
    if needs is not None:
        c.add(path, needs)


def _check_input_data(c: _Checker, oracle: dict[str, Any]) -> None:
    input_data = oracle.get("input_data")
    if not isinstance(input_data, dict):
        return
    base: Path_ = ("oracle", "input_data")
    sections = {k: v for k, v in input_data.items() if k in _SECTIONS and isinstance(v, dict)}
    for section, key, at_key, problem in namelists.iter_problems(sections):
        path: Path_ = tuple(p for p in (*base, section, key) if p is not None)
        c.add(path, problem, key=at_key)
    for section, values in sections.items():
        for key, value in values.items():
            if section == "control" and key in ("tprnfor", "tstress") and value is False:
                c.add(
                    (*base, section, key),
                    f"{key} is always true: forces and stress are part of every label",
                    warning=True,
                )
    system = input_data.get("system")
    if isinstance(system, dict):
        wfc, rho = system.get("ecutwfc"), system.get("ecutrho")
        if _real(wfc) and _real(rho):
            if rho <= wfc:
                c.add((*base, "system", "ecutrho"), f"ecutrho {rho} must exceed ecutwfc {wfc}")
            elif rho < 4 * wfc:
                c.add(
                    (*base, "system", "ecutrho"),
                    f"ecutrho {rho} < 4 × ecutwfc ({4 * wfc}): too low for any pseudopotential",
                    warning=True,
                )


def _real(value: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


_DOTTED = re.compile(r"^([a-z]+)\.(.+)$")


def _check_ladders(c: _Checker, oracle: dict[str, Any]) -> None:
    retry = oracle.get("retry")
    ladders = retry.get("ladders") if isinstance(retry, dict) else None
    if not isinstance(ladders, dict):
        return
    for cls, steps in ladders.items():
        if not isinstance(steps, list):
            continue
        for k, step in enumerate(steps):
            if not isinstance(step, dict):
                continue
            here: Path_ = ("oracle", "retry", "ladders", cls, k)
            match = step.get("match")
            if isinstance(match, str):
                try:
                    re.compile(match)
                except re.error as exc:
                    c.add((*here, "match"), f"not a regular expression: {exc}")
            for verb in ("set", "scale", "only_if"):
                changes = step.get(verb)
                if not isinstance(changes, dict):
                    continue
                for name, value in changes.items():
                    path = (*here, verb, name)
                    m = _DOTTED.match(name)
                    if not m:
                        continue  # the schema's pattern reports it
                    section, key = m.group(1), m.group(2)
                    problem = namelists.check_key(section, key)
                    if problem:
                        c.add(path, problem, key=True)
                        continue
                    if verb == "set":
                        problem = namelists.check_value(section, key, value)
                    elif verb == "scale":
                        kind = namelists.value_type(section, key)
                        if kind not in (int, float):
                            what = "a boolean" if kind is bool else "a string"
                            problem = f"{name} is {what} in pw.x; only numbers can be scaled"
                    else:
                        allowed = value if isinstance(value, list) else [value]
                        problem = next(
                            (
                                p
                                for v in allowed
                                if v is not None
                                and (p := namelists.check_value(section, key, v)) is not None
                            ),
                            None,
                        )
                    if problem:
                        c.add(path, problem)


def _check_ladders_would_run(c: _Checker, oracle: dict[str, Any]) -> None:
    """What the oracle would refuse in ``run``, found now: the oracle's own checks.

    ``validate_ladders`` is what ``EspressoOracle`` calls when the run starts; ``apply_step``
    is what the planner calls on a failed attempt. A ``scale`` of a key the recipe does not
    set and pw.x has no usable default for (``system.nbnd``) raises there, mid-run, on the
    first structure that fails that way: here it is an error at the step.
    """
    retry = oracle.get("retry")
    ladders = retry.get("ladders") if isinstance(retry, dict) else None
    if not isinstance(ladders, dict) or not ladders:
        return
    where: Path_ = ("oracle", "retry", "ladders")
    merged = {**DEFAULT_LADDERS, **ladders}
    for problem in validate_ladders(merged):
        cls = problem.split(".")[2].split("[")[0].split(":")[0] if "." in problem else ""
        c.add((*where, cls) if cls in ladders else where, problem)
    effective = copy.deepcopy(oracle)
    system = effective.setdefault("input_data", {}).setdefault("system", {})
    if _real(system.get("ecutwfc")):
        system.setdefault("ecutrho", _ECUTRHO_FACTOR_DEFAULT * float(system["ecutwfc"]))
    base = base_params(effective)
    for cls, steps in ladders.items():
        for k, step in enumerate(steps):
            for key in step.get("scale") or {}:
                if key in base or PW_DEFAULTS.get(key) is not None:
                    continue
                section, name = key.split(".", 1)
                c.add(
                    (*where, cls, k, "scale", key),
                    f"cannot scale {key}: the recipe does not set it and its pw.x default "
                    f"depends on the system; set oracle.input_data.{section}.{name} (the "
                    "value to scale) or use set: with the value wanted",
                    key=True,
                )
            try:
                params = apply_step(base, step)
            except (ValueError, TypeError, KeyError) as exc:
                if not step.get("scale"):
                    c.add((*where, cls, k), f"this step cannot be applied: {exc}")
                continue
            for problem in namelists.check_namelists(nest_input(params), allow={STARTINGPOT_KEY}):
                c.add((*where, cls, k), f"this step would give pw.x {problem}")


def _check_command(c: _Checker, oracle: dict[str, Any]) -> None:
    command = oracle.get("command", schema_default("oracle", "command"))
    try:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
    except ValueError as exc:
        c.add(("oracle", "command"), f"cannot split command: {exc}")
        return
    if not argv:
        c.add(("oracle", "command"), "empty command")
        return
    exe = argv[0]
    if shutil.which(exe) is None and not Path(exe).is_file():
        c.add(("oracle", "command"), f"{exe!r} is not on PATH; 'run' will fail", warning=True)


def _resolve_paths(data: dict[str, Any], base_dir: Path) -> None:
    def absolute(value: str) -> str:
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base_dir / p).resolve())

    for entry in data["structures"]:
        for key in FILE_KINDS:
            if key in entry:
                entry[key] = absolute(entry[key])
    oracle = data["oracle"]
    if oracle.get("pseudo_dir"):
        oracle["pseudo_dir"] = absolute(oracle["pseudo_dir"])
    for symbol, entry in oracle["pseudopotentials"].items():
        if pseudo.is_path(entry):
            oracle["pseudopotentials"][symbol] = absolute(entry)


def _default_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-.") or "recipe"
    return name if name[0].isalnum() else f"r{name}"


def _run(path: Path) -> tuple[list[Diagnostic], Recipe | None]:
    display = str(path)
    try:
        raw, pos = load_yaml(Path(path), display)
    except YamlLoadError as exc:
        return exc.diagnostics, None
    if raw is None:
        return [
            Diagnostic(display, 1, 1, "empty recipe: expected a mapping with 'structures', ...")
        ], None
    if not isinstance(raw, dict):
        kind = "a list" if isinstance(raw, list) else f"a single {type(raw).__name__} value"
        line, col = pos.at(())
        message = f"a recipe is a mapping (name:, structures:, oracle:, ...), not {kind}"
        return [Diagnostic(display, line, col, message)], None
    base_dir = Path(path).absolute().parent
    diags = schema_diagnostics(raw, pos, display)
    bad = invalid_sections(raw) if diags else set()
    c = _Checker(display, pos, base_dir)
    data = copy.deepcopy(raw)
    oracle_raw: dict[str, Any] = raw["oracle"] if isinstance(raw.get("oracle"), dict) else {}
    schema = load_schema()
    for where, value in _non_finite(raw):
        c.add(where, non_finite_message(value))
    _check_input_data(c, oracle_raw)
    _check_ladders(c, oracle_raw)
    elements = None
    if not bad & {"", "structures"}:
        fill_defaults(data["structures"], schema["properties"]["structures"])
        min_distance = oracle_raw.get("min_distance")
        if not isinstance(min_distance, int | float) or isinstance(min_distance, bool):
            min_distance = schema_default("oracle", "min_distance")
        limits = raw.get("limits") if "limits" not in bad else None
        limits = fill_defaults(
            copy.deepcopy(limits) if isinstance(limits, dict) else {},
            schema["properties"]["limits"],
        )
        elements = _check_structures(c, data["structures"], float(min_distance), limits)
    if elements is not None:
        _check_kspacing(c, oracle_raw)
    if elements is not None and "trainer" not in bad:
        _check_elements(c, raw, elements)
        _check_reference_box(c, raw)
    if elements is not None and "oracle" not in bad:
        fill_defaults(data["oracle"], schema["properties"]["oracle"])
        _check_pseudopotentials(c, data["oracle"], elements)
        _check_command(c, data["oracle"])
        _check_ladders_would_run(c, data["oracle"])
        _check_cost(c, data["oracle"])
        _check_kgrid_consistency(c, data["structures"], data["oracle"])
        _check_physics(c, data["structures"], data["oracle"], elements)
    all_diags = sorted(set(diags) | set(c.out))
    if any(d.severity == "error" for d in all_diags) or elements is None:
        return all_diags, None
    fill_defaults(data)
    _finish_defaults(data, elements)
    _resolve_paths(data, base_dir)
    recipe = Recipe(
        name=data.get("name") or _default_name(Path(path)),
        path=Path(path).absolute(),
        base_dir=base_dir.resolve(),
        data=data,
    )
    recipe.data["name"] = recipe.name
    return all_diags, recipe


def _finish_defaults(data: dict[str, Any], elements: dict[str, list[int]]) -> None:
    """Defaults the schema cannot state: derived from other values."""
    data["trainer"].setdefault("elements", sorted(elements))
    input_data = data["oracle"]["input_data"]
    system = input_data["system"]
    system.setdefault("ecutrho", _ECUTRHO_FACTOR_DEFAULT * float(system["ecutwfc"]))
    control = input_data["control"]
    # forces and stress are the labels; never let a recipe switch them off
    control["tprnfor"] = True
    control["tstress"] = True


def _guard(
    fn: Callable[[Path], tuple[list[Diagnostic], Recipe | None]], path: Path
) -> tuple[list[Diagnostic], Recipe | None]:
    try:
        return fn(path)
    except RecursionError as exc:
        return [Diagnostic(str(path), 1, 1, f"recipe too deeply nested ({_short(exc)})")], None
    except Exception as exc:  # a bug here must not become a traceback for the user
        message = f"internal error while checking the recipe (please report): {exc!r}"
        return [Diagnostic(str(path), 1, 1, message)], None


def check_recipe(path: Path) -> list[Diagnostic]:
    """Every problem in the recipe at ``path``, located and sorted; never raises for bad input.

    Warnings (severity ``"warning"``) do not stop a run: overlapping atoms (quarantined),
    cutoffs below a pseudopotential's suggestion, a pw.x command not on PATH.
    """
    return _guard(_run, Path(path))[0]


def oracle_as_written(path: Path) -> dict[str, Any]:
    """The ``oracle`` section exactly as the recipe at ``path`` writes it (no defaults), for
    telling the recipe's values from the oracle's (the dry run's effective values)."""
    try:
        raw, _ = load_yaml(Path(path), str(path))
    except YamlLoadError:
        return {}
    oracle = raw.get("oracle") if isinstance(raw, dict) else None
    return copy.deepcopy(oracle) if isinstance(oracle, dict) else {}


def load_recipe(path: Path) -> Recipe:
    """Load and validate a recipe; raise :class:`RecipeError` with every error if invalid."""
    diags, recipe = _guard(_run, Path(path))
    errors = [d for d in diags if d.severity == "error"]
    if errors or recipe is None:
        raise RecipeError(errors or diags)
    return recipe
