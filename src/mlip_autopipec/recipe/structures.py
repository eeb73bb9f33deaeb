"""Turning the ``structures`` entries of a recipe into ASE Atoms, deterministically.

One registry (:data:`SOURCES`) knows every kind of entry: its schema branch (in
``recipe.schema.json``, found by the kind's key), how to build its base structures and what
to check before building. Validation (:func:`check_entry`) and the builder
(:func:`build_structures`) both go through :func:`expand`, so whatever validate accepts the
builder can build, and whatever the builder cannot build validate refuses.

Every base structure then goes through the same transformations, whatever its source:
``supercell`` -> ``substitutions`` -> ``vacancies`` -> ``strain`` (the unstrained cell is
always kept) -> ``rattle`` (copies of every strained cell).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms
from ase.build import bulk, make_supercell, molecule, surface
from ase.collections import g2
from ase.data import atomic_numbers
from ase.io.formats import UnknownFileTypeError, ioformats, string2index

from mlip_autopipec.recipe.model import Recipe, SourcedAtoms
from mlip_autopipec.recipe.schema import schema_default

#: Strains closer to zero than this are the unstrained cell.
_ZERO_STRAIN = 1e-12
#: Crystals whose conventional cubic cell ``ase.build.bulk(cubic=True)`` can build; Miller
#: indices of a ``surface`` entry refer to that cell (the usual convention), else to the
#: primitive cell ASE builds.
_CUBIC = {"sc", "fcc", "bcc", "diamond", "zincblende", "rocksalt", "cesiumchloride", "fluorite"}
#: Kinds whose base structures are read from a file (their paths are resolved at load time).
FILE_KINDS = ("file", "trajectory")

Problem = tuple[tuple[str | int, ...], str, bool]
"""(path inside the entry, message, located at the key) of a refused entry."""


class EntryError(ValueError):
    """An entry that cannot be built; ``where`` is the path inside the entry."""

    def __init__(self, where: tuple[str | int, ...], message: str, *, key: bool = False):
        super().__init__(message)
        self.where = where
        self.key = key


@dataclass
class Base:
    """One structure of a source before the transformations."""

    label: str
    atoms: Atoms
    #: how the validator names it in messages (``structures[0]``, ``frame 3 of 'a.xyz'``)
    what: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """One kind of ``structures`` entry: ``key`` names it in the recipe and the schema."""

    key: str
    build: Callable[[int, dict[str, Any], Path], list[Base]]
    #: checks that need no building (a file exists); raise EntryError
    precheck: Callable[[dict[str, Any], Path], None] | None = None


# ---------------------------------------------------------------------------------------------
# helpers shared by the sources


def parse_index(index: str | int) -> int | slice:
    """ASE index string (``":"``, ``"3"``, ``"-1"``, ``"0:10:2"``) or int -> int | slice."""
    if isinstance(index, int):
        return index
    parsed = string2index(index.strip())
    if isinstance(parsed, str):
        raise ValueError(f"not an ASE index: {index!r}")
    return parsed


def _name(spec: dict[str, Any]) -> str:
    return str(spec.get("element") or "".join(spec["elements"]))


def _supercell(atoms: Atoms, sc: list[Any] | None) -> Atoms:
    if not sc:
        return atoms
    if isinstance(sc[0], list):
        matrix = np.array(sc, dtype=int)
        if round(abs(np.linalg.det(matrix))) == 0:
            raise ValueError(f"supercell matrix {sc} is singular")
        return make_supercell(atoms, matrix)
    return atoms.repeat(tuple(int(n) for n in sc))


def _supercell_label(sc: list[Any]) -> str:
    return " supercell=" + ("x".join(map(str, sc)) if not isinstance(sc[0], list) else str(sc))


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def rattle_seed(seed: int, entry: int, strain: int, copy: int) -> int:
    """Seed of one rattled copy: independent streams per entry, strain and copy."""
    return _seed(seed, entry, strain, copy)


def _display_file(file: str, base_dir: Path) -> str:
    p = Path(file)
    if p.is_absolute():
        try:
            return os.path.relpath(p, base_dir) if p.is_relative_to(base_dir) else str(p)
        except ValueError:
            return str(p)
    return file


def _full_path(file: str, base_dir: Path) -> Path:
    path = Path(file).expanduser()
    return path if path.is_absolute() else base_dir / path


def _check_file(key: str) -> Callable[[dict[str, Any], Path], None]:
    def check(entry: dict[str, Any], base_dir: Path) -> None:
        full = _full_path(entry[key], base_dir)
        if not full.exists():
            raise EntryError((key,), f"structure file {entry[key]!r} not found ({full})")
        if full.is_dir():
            raise EntryError((key,), f"structure file {entry[key]!r} is a directory")
        fmt = entry.get("format")
        if fmt is not None and fmt not in ioformats:
            from mlip_autopipec.recipe.schema import did_you_mean

            hint = did_you_mean(fmt, sorted(ioformats))
            raise EntryError(("format",), f"{fmt!r} is not an ASE format{hint}")

    return check


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# the sources


def bulk_base(spec: dict[str, Any]) -> Atoms:
    """The cell of a ``bulk`` spec: ``ase.build.bulk`` then the supercell. Raises on bad input."""
    atoms = bulk(
        _name(spec),
        spec["crystal"],
        a=spec["a"],
        c=spec.get("c"),
        cubic=bool(spec.get("cubic", False)),
        orthorhombic=bool(spec.get("orthorhombic", False)),
    )
    return _supercell(
        atoms, spec.get("supercell", schema_default("structures", "bulk", "supercell"))
    )


def _bulk(i: int, entry: dict[str, Any], base_dir: Path) -> list[Base]:
    spec = entry["bulk"]
    try:
        atoms = bulk_base(spec)
    except Exception as exc:  # ASE raises many types for impossible crystals
        raise EntryError(
            ("bulk",), f"ase.build.bulk cannot build this: {_short(exc)}", key=True
        ) from exc
    label = f"bulk[{i}] {_name(spec)} {spec['crystal']}"
    if spec.get("cubic"):
        label += " cubic"
    if spec.get("orthorhombic"):
        label += " orthorhombic"
    sc = spec.get("supercell", schema_default("structures", "bulk", "supercell"))
    if sc != [1, 1, 1]:
        label += _supercell_label(sc)
    return [Base(label, atoms, f"structures[{i}]")]


def _surface(i: int, entry: dict[str, Any], base_dir: Path) -> list[Base]:
    spec = entry["surface"]
    miller = tuple(int(h) for h in spec["miller"])
    try:
        if not any(miller):
            raise ValueError("Miller index (0, 0, 0) is not a plane")
        lattice = bulk(
            _name(spec),
            spec["crystal"],
            a=spec["a"],
            c=spec.get("c"),
            cubic=spec["crystal"] in _CUBIC,
        )
        atoms = surface(lattice, miller, int(spec["layers"]), vacuum=float(spec["vacuum"]))
        atoms = atoms.repeat((*(int(n) for n in spec["size"]), 1))
    except Exception as exc:  # ASE raises many types for impossible crystals/planes
        raise EntryError(
            ("surface",), f"ase.build.surface cannot build this: {_short(exc)}", key=True
        ) from exc
    atoms.pbc = True  # pw.x is periodic in 3D; the vacuum separates the slab from its images
    hkl = "".join(str(h) for h in miller)
    label = (
        f"surface[{i}] {_name(spec)} {spec['crystal']}({hkl}) layers={spec['layers']} "
        f"vacuum={float(spec['vacuum']):g}"
    )
    if list(spec["size"]) != [1, 1]:
        label += " size=" + "x".join(map(str, spec["size"]))
    return [Base(label, atoms, f"structures[{i}]")]


def _molecule(i: int, entry: dict[str, Any], base_dir: Path) -> list[Base]:
    spec = entry["molecule"]
    name = spec["name"]
    if name not in g2.names and name not in atomic_numbers:
        from mlip_autopipec.recipe.schema import did_you_mean

        hint = did_you_mean(name, sorted(g2.names))
        raise EntryError(
            ("molecule", "name"),
            f"{name!r} is not a molecule ase.build.molecule knows (ASE's g2 set){hint}",
        )
    atoms = molecule(name)
    atoms.center(vacuum=float(spec["vacuum"]))
    atoms.pbc = True
    return [
        Base(f"molecule[{i}] {name} vacuum={float(spec['vacuum']):g}", atoms, f"structures[{i}]")
    ]


def _box(symbols: list[str], positions: np.ndarray, side: float) -> Atoms:
    atoms = Atoms(symbols, positions=positions, cell=[side, side, side], pbc=True)
    atoms.translate(np.full(3, side / 2) - atoms.positions.mean(axis=0))
    return atoms


def _isolated_atoms(i: int, entry: dict[str, Any], base_dir: Path) -> list[Base]:
    spec = entry["isolated_atoms"]
    side = float(spec["box"])
    return [
        Base(
            f"isolated_atoms[{i}] {symbol} box={side:g}",
            _box([symbol], np.zeros((1, 3)), side),
            f"structures[{i}] ({symbol})",
            {"element": symbol},
        )
        for symbol in spec["elements"]
    ]


def _dimer(i: int, entry: dict[str, Any], base_dir: Path) -> list[Base]:
    spec = entry["dimer"]
    side = float(spec["box"])
    a, b = spec["elements"]
    out = []
    for d in spec["distances"]:
        if d >= side / 2:
            raise EntryError(
                ("dimer", "distances"),
                f"distance {d} Å is not below half the box ({side / 2:g} Å): the atom would "
                "be closer to the other one's periodic image",
            )
        atoms = _box([a, b], np.array([[0.0, 0.0, 0.0], [float(d), 0.0, 0.0]]), side)
        out.append(
            Base(
                f"dimer[{i}] {a}{b} d={float(d):.3f}",
                atoms,
                f"structures[{i}] (d={d})",
                {"distance": float(d)},
            )
        )
    return out


def read_frames(entry: dict[str, Any], base_dir: Path) -> list[tuple[int, Atoms]]:
    """(frame number, Atoms) selected by ``index`` from the file of a file entry.

    Raises OSError/ValueError/IndexError (and whatever the ASE reader raises) on bad input.
    Calculators attached by the reader are dropped: labels come from the oracle only.
    Initial magnetic moments are kept as read.
    """
    path = _full_path(entry["file"], base_dir)
    frames = ase.io.read(path, index=":", format=entry.get("format"))
    if isinstance(frames, Atoms):
        frames = [frames]
    numbers = list(range(len(frames)))
    index = parse_index(entry.get("index", schema_default("structures", "index")))
    if isinstance(index, int):
        if not -len(frames) <= index < len(frames):
            raise IndexError(f"index {index} is out of range: the file has {len(frames)} frames")
        chosen = [numbers[index]]
    else:
        chosen = numbers[index]
        if not chosen:
            raise IndexError(
                f"index {entry.get('index')!r} selects no frame: the file has {len(frames)}"
            )
    out = []
    for n in chosen:
        atoms = frames[n]
        atoms.calc = None
        out.append((n, atoms))
    return out


_LINE = re.compile(r"\bline\s+(\d+)", re.IGNORECASE)


def _read_failure(shown: str, fmt: str | None, exc: BaseException) -> str:
    """Why ASE could not read a structure file, without a word of the file's content.

    ASE readers put the offending line (or a whole record) into their exceptions; the file
    may be anything the recipe names (``/etc/passwd``, ``/proc/self/environ``), so only the
    exception class and a line number pass through.
    """
    if isinstance(exc, UnknownFileTypeError):
        return (
            f"ASE cannot tell the format of {shown!r} from its name or first bytes; set "
            "format: (e.g. extxyz, cif, vasp, espresso-in)"
        )
    if isinstance(exc, UnicodeDecodeError):
        return f"{shown!r} is not text (byte {exc.start} is not UTF-8): a binary file?"
    m = _LINE.search(str(exc))
    where = f" near line {m.group(1)}" if m else ""
    reader = f"ASE's '{fmt}' reader" if fmt else "ASE (format guessed from the file name)"
    return (
        f"{reader} cannot parse {shown!r}{where} ({type(exc).__name__}): expected a "
        "structure file in that format; its content is not shown"
    )


def _read(key: str, entry: dict[str, Any], read: Callable[[], list[tuple[int, Atoms]]]) -> Any:
    try:
        return read()
    except IndexError as exc:
        where = "index" if "index" in entry else key
        raise EntryError((where,), _short(exc)) from exc
    except EntryError:
        raise
    except Exception as exc:  # ASE readers raise anything from ValueError to KeyError
        raise EntryError((key,), _read_failure(str(entry[key]), entry.get("format"), exc)) from exc


def _file(i: int, entry: dict[str, Any], base_dir: Path) -> list[Base]:
    shown = _display_file(entry["file"], base_dir)
    frames = _read("file", entry, lambda: read_frames(entry, base_dir))
    return [
        Base(f"file {shown}@{n}", a, f"frame {n} of {entry['file']!r}", {"frame": n})
        for n, a in frames
    ]


def _trajectory_frames(entry: dict[str, Any], base_dir: Path) -> list[tuple[int, Atoms]]:
    path = _full_path(entry["trajectory"], base_dir)
    start, stop, stride = int(entry["start"]), entry.get("stop"), int(entry["stride"])
    # iread streams the file: a long MD trajectory is never held in memory whole
    selected = slice(start, None if stop is None else int(stop), stride)
    out = []
    for k, atoms in enumerate(ase.io.iread(path, index=selected, format=entry.get("format"))):
        atoms.calc = None
        out.append((start + k * stride, atoms))
    if not out:
        raise IndexError(
            f"start {start}, stop {stop}, stride {stride} select no frame of "
            f"{entry['trajectory']!r}"
        )
    return out


def _trajectory(i: int, entry: dict[str, Any], base_dir: Path) -> list[Base]:
    shown = _display_file(entry["trajectory"], base_dir)
    frames = _read("trajectory", entry, lambda: _trajectory_frames(entry, base_dir))
    return [
        Base(
            f"trajectory {shown}@{n}",
            a,
            f"frame {n} of {entry['trajectory']!r}",
            {"frame": n},
        )
        for n, a in frames
    ]


#: Every kind of ``structures`` entry, by the key that names it.
SOURCES: dict[str, Source] = {
    s.key: s
    for s in (
        Source("bulk", _bulk),
        Source("file", _file, _check_file("file")),
        Source("surface", _surface),
        Source("molecule", _molecule),
        Source("isolated_atoms", _isolated_atoms),
        Source("dimer", _dimer),
        Source("trajectory", _trajectory, _check_file("trajectory")),
    )
}
#: The transformations every entry may carry, in the order they are applied.
TRANSFORMS = ("supercell", "substitutions", "vacancies", "strain", "rattle")


def kind_of(entry: dict[str, Any]) -> str:
    """The source key of an entry (the schema guarantees exactly one)."""
    for key in SOURCES:
        if key in entry:
            return key
    raise KeyError(f"no source key in {sorted(entry)}")


def schema_branch(kind: str) -> dict[str, Any]:
    """The schema fragment of one source (the oneOf branch of ``structures`` items)."""
    from mlip_autopipec.recipe.schema import load_schema

    for branch in load_schema()["properties"]["structures"]["items"]["oneOf"]:
        if branch.get("required", [None])[0] == kind:
            return dict(branch)
    raise KeyError(kind)


# ---------------------------------------------------------------------------------------------
# the transformations


def strains(entry: dict[str, Any]) -> list[float]:
    """The isotropic strain samples of an entry, always including 0 (the unstrained cell)."""
    spec = entry.get("strain")
    if not spec or "min" not in spec:
        return [0.0]
    values = [float(e) for e in np.linspace(spec["min"], spec["max"], spec["count"])]
    if not any(abs(e) < _ZERO_STRAIN for e in values):
        values.append(0.0)
    return sorted(0.0 if abs(e) < _ZERO_STRAIN else e for e in values)


def _voigt(m: list[Any]) -> np.ndarray:
    if len(m) == 6 and not isinstance(m[0], list):
        xx, yy, zz, yz, xz, xy = (float(v) for v in m)
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return np.array(m, dtype=float)


def strain_tensors(i: int, entry: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """(label suffix, 3x3 strain tensor) of every strained copy, the unstrained cell first
    for matrix and random strains and in sorted order for isotropic ones."""
    spec = entry.get("strain")
    if not spec:
        return [("", np.zeros((3, 3)))]
    if "min" in spec:
        if spec["min"] > spec["max"]:
            raise EntryError(("strain", "min"), "strain.min is larger than strain.max")
        return [(f" strain={e:+.3f}", np.eye(3) * e) for e in strains(entry)]
    out = [(" strain=0", np.zeros((3, 3)))]
    if "matrices" in spec:
        for k, m in enumerate(spec["matrices"]):
            eps = _voigt(m)
            if abs(np.linalg.det(np.eye(3) + eps)) < 0.1:
                raise EntryError(
                    ("strain", "matrices", k), "this strain collapses the cell (det(1 + e) < 0.1)"
                )
            out.append((f" strain=m{k + 1}", eps))
        return out
    rng = np.random.default_rng(_seed(int(spec["seed"]), i))
    normal, shear = float(spec["max_normal"]), float(spec["max_shear"])
    for k in range(int(spec["random"])):
        eps = np.diag(rng.uniform(-normal, normal, 3))
        off = rng.uniform(-shear, shear, 3)
        eps[1, 2] = eps[2, 1] = off[0]
        eps[0, 2] = eps[2, 0] = off[1]
        eps[0, 1] = eps[1, 0] = off[2]
        out.append((f" strain=r{k + 1}", eps))
    return out


def _strained(atoms: Atoms, eps: np.ndarray) -> Atoms:
    out = atoms.copy()
    if np.any(eps):
        # r' = (1 + e) r for row vectors: R' = R (1 + e)^T
        out.set_cell(atoms.cell[:] @ (np.eye(3) + eps).T, scale_atoms=True)
    return out


def _substitute(i: int, b: int, atoms: Atoms, subs: list[dict[str, Any]]) -> tuple[Atoms, str]:
    atoms = atoms.copy()
    label = ""
    for k, sub in enumerate(subs):
        symbols = atoms.get_chemical_symbols()
        sites = [n for n, s in enumerate(symbols) if s == sub["from"]]
        count = (
            int(sub["count"]) if "count" in sub else int(round(float(sub["fraction"]) * len(sites)))
        )
        if not sites:
            raise EntryError(
                ("substitutions", k, "from"), f"no {sub['from']} atom to replace in {atoms.symbols}"
            )
        if count > len(sites) or count < 1:
            raise EntryError(
                ("substitutions", k),
                f"cannot replace {count} of the {len(sites)} {sub['from']} atoms of "
                f"{atoms.symbols} (count or fraction gives 1 to {len(sites)})",
            )
        rng = np.random.default_rng(_seed(int(sub["seed"]), i, b, k))
        for n in rng.choice(sites, size=count, replace=False):
            symbols[int(n)] = sub["to"]
        atoms.set_chemical_symbols(symbols)
        label += f" sub={sub['from']}->{sub['to']}:{count}"
    return atoms, label


def _vacancies(i: int, b: int, atoms: Atoms, spec: dict[str, Any]) -> tuple[Atoms, str]:
    count = int(spec["count"])
    if count >= len(atoms):
        raise EntryError(
            ("vacancies", "count"),
            f"cannot remove {count} of the {len(atoms)} atoms of {atoms.symbols}",
        )
    rng = np.random.default_rng(_seed(int(spec["seed"]), i, b))
    removed = sorted(int(n) for n in rng.choice(len(atoms), size=count, replace=False))
    out = atoms.copy()
    del out[removed]
    return out, f" vacancies={count}"


@dataclass
class Expanded:
    """The unrattled structures of one entry (what validation looks at)."""

    #: per base structure: (base, [(label, atoms, origin), ...] one per strain)
    groups: list[tuple[Base, list[tuple[str, Atoms, dict[str, Any]]]]]
    rattle: dict[str, Any] | None

    @property
    def count(self) -> int:
        """How many structures the builder makes from this entry."""
        copies = 1 + (int(self.rattle["count"]) if self.rattle else 0)
        return sum(len(strained) for _, strained in self.groups) * copies


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def expand(i: int, entry: dict[str, Any], base_dir: Path) -> Expanded:
    """Entry ``i`` built up to (not including) the rattle; raises :class:`EntryError`."""
    kind = kind_of(entry)
    source = SOURCES[kind]
    if source.precheck is not None:
        source.precheck(entry, base_dir)
    tensors = strain_tensors(i, entry)  # refuses bad strains before any file is read
    bases = source.build(i, entry, base_dir)
    sc = entry.get("supercell")
    groups = []
    for b, base in enumerate(bases):
        atoms, label = base.atoms, base.label
        if sc:
            try:
                atoms = _supercell(atoms, sc)
            except ValueError as exc:
                raise EntryError(("supercell",), str(exc)) from exc
            label += _supercell_label(sc)
        if entry.get("substitutions"):
            atoms, extra = _substitute(i, b, atoms, entry["substitutions"])
            label += extra
        if entry.get("vacancies"):
            atoms, extra = _vacancies(i, b, atoms, entry["vacancies"])
            label += extra
        spec_key = kind if kind not in FILE_KINDS else None
        origin_base: dict[str, Any] = {"entry": i, "kind": kind, "base": b, **base.params}
        if spec_key is not None:
            origin_base["params"] = _jsonable(entry[kind])
        else:
            origin_base["file"] = _display_file(entry[kind], base_dir)
        for name in ("supercell", "substitutions", "vacancies"):
            if entry.get(name):
                origin_base[name] = _jsonable(entry[name])
        strained = []
        for suffix, eps in tensors:
            origin = dict(origin_base)
            if entry.get("strain"):
                origin["strain"] = _jsonable(eps)
                origin["strain_kind"] = (
                    "isotropic"
                    if "min" in entry["strain"]
                    else "matrix"
                    if "matrices" in entry["strain"]
                    else "random"
                )
            strained.append((label + suffix, _strained(atoms, eps), origin))
        groups.append((base, strained))
    return Expanded(groups, entry.get("rattle"))


def entry_structures(i: int, entry: dict[str, Any], base_dir: Path) -> list[SourcedAtoms]:
    """Structures of one ``structures`` entry: each strained cell, then its rattled copies."""
    expanded = expand(i, entry, base_dir)
    rattle = expanded.rattle
    out: list[SourcedAtoms] = []
    for b, (_, strained) in enumerate(expanded.groups):
        for s, (label, atoms, origin) in enumerate(strained):
            out.append(SourcedAtoms(label, atoms, {**origin, "rattle": 0}))
            if not rattle:
                continue
            for k in range(1, int(rattle["count"]) + 1):
                copy = atoms.copy()
                seed = int(rattle.get("seed", 0))
                # the first base keeps the seeds of the bulk-only builder (stored runs resume)
                parts = (seed, i, s, k) if b == 0 else (seed, i, s, k, b)
                copy.rattle(stdev=rattle["stdev"], seed=_seed(*parts))
                out.append(SourcedAtoms(f"{label} rattle={k}", copy, {**origin, "rattle": k}))
    return out


@dataclass
class EntryCheck:
    """What validation learns from one entry without running the rattle."""

    problems: list[Problem]
    #: (what, atoms) whose cell validation checks: per base, its most compressed copy
    cells: list[tuple[str, Atoms]]
    #: families of cells that should share a k-point grid: name -> [(label, atoms)]
    families: dict[str, list[tuple[str, Atoms]]]
    #: the unrattled structures (for the elements they contain)
    structures: list[Atoms]
    count: int
    #: where a k-grid warning about this entry points (inside the entry)
    where: tuple[str | int, ...]


def check_entry(i: int, entry: dict[str, Any], base_dir: Path) -> EntryCheck:
    """Build entry ``i`` as the builder would (without the rattle) and report what fails."""
    kind = kind_of(entry)
    where: tuple[str | int, ...] = ("strain",) if entry.get("strain") else (kind,)
    try:
        expanded = expand(i, entry, base_dir)
    except EntryError as exc:
        return EntryCheck([(exc.where, str(exc), exc.key)], [], {}, [], 0, where)
    cells: list[tuple[str, Atoms]] = []
    families: dict[str, list[tuple[str, Atoms]]] = {}
    structures: list[Atoms] = []
    for base, strained in expanded.groups:
        squeezed = min(strained, key=lambda s: abs(s[1].cell.volume))
        cells.append((base.what, squeezed[1]))
        structures.extend(atoms for _, atoms, _ in strained)
        if entry.get("strain"):
            name = "" if len(expanded.groups) == 1 else base.label
            for label, atoms, _ in strained:
                families.setdefault(name, []).append(
                    ("strain " + label.rsplit(" strain=", 1)[1], atoms)
                )
        elif strained[0][1].cell.rank == 3:
            atoms = strained[0][1]
            short = f"frame {base.params['frame']}" if "frame" in base.params else base.label
            families.setdefault(atoms.get_chemical_formula(), []).append((short, atoms))
    return EntryCheck([], cells, families, structures, expanded.count, where)


def build_structures(recipe: Recipe) -> list[SourcedAtoms]:
    """Every structure the recipe names, in recipe order; the same result on every call."""
    from mlip_autopipec.oracle.magnetism import set_recipe_moments

    out: list[SourcedAtoms] = []
    for i, entry in enumerate(recipe.data["structures"]):
        # initial moments come from the recipe (never ASE's bulk defaults)
        items = entry_structures(i, entry, recipe.base_dir)
        out.extend(set_recipe_moments(items, entry, recipe.data.get("oracle") or {}))
    return out
