"""check_recipe / load_recipe: schema validation, then the checks the schema cannot express."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io.espresso import kspacing_to_grid
from ase.neighborlist import neighbor_list

from mlip_autopipec.errors import Diagnostic, RecipeError
from mlip_autopipec.recipe import pseudo
from mlip_autopipec.recipe._yaml import Path_, Positions, YamlLoadError, load_yaml
from mlip_autopipec.recipe.model import Recipe, SourcedAtoms
from mlip_autopipec.recipe.namelists import check_key
from mlip_autopipec.recipe.schema import (
    dotted,
    fill_defaults,
    invalid_sections,
    load_schema,
    schema_diagnostics,
)
from mlip_autopipec.recipe.structures import FILE_KINDS, EntryCheck, check_entry, kind_of

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


def _check_structures(
    c: _Checker, entries: list[dict[str, Any]], min_distance: float
) -> dict[str, list[int]] | None:
    """Elements -> indices of the entries using them; None if some entry failed."""
    elements: dict[str, list[int]] = {}
    ok = True
    total = 0
    for i, entry in enumerate(entries):
        path: Path_ = ("structures", i)
        checked = c.checks[i] = check_entry(i, entry, c.base_dir)
        for where, message, key in checked.problems:
            c.add((*path, *where), message, key=key)
            ok = False
        for what, atoms in checked.cells:
            _check_cell(c, (*path, kind_of(entry)), what, atoms, min_distance)
        total += checked.count
        for atoms in checked.structures:
            for symbol in set(atoms.get_chemical_symbols()):
                if i not in elements.setdefault(symbol, []):
                    elements[symbol].append(i)
    if total > MANY_STRUCTURES:
        c.add(
            ("structures",),
            f"{total} structures to label: is that intended?",
            key=True,
            warning=True,
        )
    return elements if ok else None


def _grid(atoms: Atoms, kspacing: float) -> str:
    return "x".join(str(k) for k in kspacing_to_grid(atoms, kspacing))


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
        named = [(f"structures[{i}] #{n}", a) for n, a in enumerate(checked.structures)]
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


def _check_pseudopotentials(
    c: _Checker, oracle: dict[str, Any], elements: dict[str, list[int]]
) -> None:
    pps: dict[str, str] = oracle["pseudopotentials"]
    path: Path_ = ("oracle", "pseudopotentials")
    for symbol in sorted(elements):
        if symbol not in pps:
            c.add(
                path,
                f"no pseudopotential for {symbol!r} (used by structures[{elements[symbol][0]}])",
                key=True,
            )
    dirs = pseudo.search_dirs(oracle.get("pseudo_dir"), c.base_dir)
    ecutwfc = oracle.get("input_data", {}).get("system", {}).get("ecutwfc")
    for symbol, entry in pps.items():
        where = (*path, symbol)
        found = pseudo.locate(entry, dirs, c.base_dir)
        if found is None:
            close = pseudo.close_names(entry, dirs)
            hint = f"; did you mean {close[0]!r}?" if close else ""
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


def _check_input_data(c: _Checker, oracle: dict[str, Any]) -> None:
    input_data = oracle.get("input_data")
    if not isinstance(input_data, dict):
        return
    base: Path_ = ("oracle", "input_data")
    for section in _SECTIONS:
        values = input_data.get(section)
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            problem = check_key(section, key)
            if problem:
                c.add((*base, section, key), problem, key=True)
            if section == "control" and key in ("tprnfor", "tstress") and value is False:
                c.add(
                    (*base, section, key),
                    f"{key} is always true: forces and stress are part of every label",
                    warning=True,
                )
    system = input_data.get("system")
    if isinstance(system, dict):
        wfc, rho = system.get("ecutwfc"), system.get("ecutrho")
        if isinstance(wfc, int | float) and isinstance(rho, int | float):
            if rho <= wfc:
                c.add((*base, "system", "ecutrho"), f"ecutrho {rho} must exceed ecutwfc {wfc}")
            elif rho < 4 * wfc:
                c.add(
                    (*base, "system", "ecutrho"),
                    f"ecutrho {rho} < 4 × ecutwfc ({4 * wfc}): too low for any pseudopotential",
                    warning=True,
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
            match = step.get("match")
            if isinstance(match, str):
                try:
                    re.compile(match)
                except re.error as exc:
                    where: Path_ = ("oracle", "retry", "ladders", cls, k, "match")
                    c.add(where, f"not a regular expression: {exc}")
            for verb in ("set", "scale", "only_if"):
                changes = step.get(verb)
                if not isinstance(changes, dict):
                    continue
                for name in changes:
                    m = _DOTTED.match(name)
                    if not m:
                        continue
                    problem = check_key(m.group(1), m.group(2))
                    if problem:
                        path = ("oracle", "retry", "ladders", cls, k, verb, name)
                        c.add(path, problem, key=True)


def _check_command(c: _Checker, oracle: dict[str, Any]) -> None:
    command = oracle.get("command", "pw.x")
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
        kind = "a list" if isinstance(raw, list) else f"a {type(raw).__name__} ({raw!r:.40})"
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
    _check_input_data(c, oracle_raw)
    _check_ladders(c, oracle_raw)
    elements = None
    if not bad & {"", "structures"}:
        fill_defaults(data["structures"], schema["properties"]["structures"])
        min_distance = oracle_raw.get("min_distance", 0.5)
        if not isinstance(min_distance, int | float) or isinstance(min_distance, bool):
            min_distance = 0.5
        elements = _check_structures(c, data["structures"], float(min_distance))
    if elements is not None and "trainer" not in bad:
        _check_elements(c, raw, elements)
    if elements is not None and "oracle" not in bad:
        fill_defaults(data["oracle"], schema["properties"]["oracle"])
        _check_pseudopotentials(c, data["oracle"], elements)
        _check_command(c, data["oracle"])
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


def load_recipe(path: Path) -> Recipe:
    """Load and validate a recipe; raise :class:`RecipeError` with every error if invalid."""
    diags, recipe = _guard(_run, Path(path))
    errors = [d for d in diags if d.severity == "error"]
    if errors or recipe is None:
        raise RecipeError(errors or diags)
    return recipe
