"""``autopipec init ELEMENTS...``: a commented starter recipe (like ``pacemaker -t``).

The recipe uses ASE's reference crystal of each element (``ase.data.reference_states``) for
a bulk entry with strains and rattled copies, a dimer scan for elements that are molecules,
and the pseudopotentials found in the usual folders (one functional for all elements when
the library allows it). It validates as written when a pseudopotential exists for every
element; otherwise the placeholders say what to fill in.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from ase.data import atomic_numbers, chemical_symbols, reference_states

from mlip_autopipec.errors import UsageError
from mlip_autopipec.recipe import pseudo

#: Crystals of ``reference_states`` that ``ase.build.bulk`` builds from ``a`` (and c/a).
_BULK = {"fcc", "bcc", "hcp", "diamond", "sc"}
#: Functionals in order of preference when several are available for every element.
_FUNCTIONALS = ("pbe", "pbesol", "pz", "lda")
#: Wavefunction cutoff (Ry) when no pseudopotential header suggests one.
_DEFAULT_ECUTWFC = 40.0
_FUNCTIONAL = re.compile(r"^[A-Z][a-z]?[._](?P<xc>[a-z]+)")


def _candidates(symbol: str, dirs: list[Path]) -> list[Path]:
    found: list[Path] = []
    for d in dirs:
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for f in entries:
            name = f.name.removesuffix(".gz")
            if f.is_file() and name.upper().endswith(".UPF") and _element_of(name) == symbol:
                found.append(f)
    return found


def _element_of(name: str) -> str | None:
    m = re.match(r"^([A-Z][a-z]?)(?=[._-])", name)
    return m.group(1) if m else None


def _functional(path: Path) -> str | None:
    m = _FUNCTIONAL.match(path.name)
    return m.group("xc") if m else None


def choose_pseudopotentials(
    elements: list[str], dirs: list[Path]
) -> tuple[dict[str, Path | None], str | None]:
    """A pseudopotential per element (None if there is none) and the common functional.

    Prefers one functional for every element (mixing them is an ``xc_conflict`` in pw.x),
    PBE first; within it a pslibrary file (``psl``) when there is one.
    """
    options = {el: _candidates(el, dirs) for el in elements}
    common = None
    for xc in _FUNCTIONALS:
        if all(any(_functional(p) == xc for p in options[el]) for el in elements):
            common = xc
            break
    chosen: dict[str, Path | None] = {}
    for el in elements:
        files = [p for p in options[el] if common is None or _functional(p) == common]
        files.sort(key=lambda p: ("psl" not in p.name, "rel" in p.name, p.name))
        chosen[el] = files[0] if files else None
    return chosen, common


def _structure_lines(symbol: str) -> list[str]:
    ref: dict[str, Any] = dict(reference_states[atomic_numbers[symbol]] or {})
    kind = ref.get("symmetry")
    if kind in _BULK:
        spec = f"element: {symbol}, crystal: {kind}, a: {ref['a']}"
        if kind == "hcp" and "c/a" in ref:
            spec += f", c: {round(ref['a'] * ref['c/a'], 3)}"
        lines = [
            f"  # {symbol}: ASE's reference {kind} crystal (ase.data.reference_states)",
            f"  - bulk: {{{spec}}}",
            "    strain: {min: -0.03, max: 0.03, count: 5}   # isotropic; also matrices/random",
            "    rattle: {stdev: 0.05, count: 2, seed: 0}     # displaced copies of every cell",
        ]
        if ref.get("magmom_per_atom"):
            lines.insert(
                1,
                f"  # {symbol} is magnetic (about {ref['magmom_per_atom']} muB/atom): "
                "spin-polarise the oracle (nspin: 2) for real labels",
            )
        return lines
    if kind == "diatom":
        d = float(ref["d"])
        distances = ", ".join(f"{d * f:.2f}" for f in (0.85, 1.0, 1.15, 1.3, 1.6))
        return [
            f"  # {symbol} is a molecule: a dimer scan around its bond length {d} Å",
            f"  - dimer: {{elements: [{symbol}, {symbol}], distances: [{distances}]}}",
        ]
    return [
        f"  # {symbol}: no simple reference crystal in ASE; read your structures from a file",
        f"  - isolated_atoms: {{elements: [{symbol}]}}",
        "  # - file: my_structures.extxyz",
    ]


def schema_path() -> Path:
    """The installed recipe JSON schema (for the editor's yaml-language-server line)."""
    return Path(str(resources.files("mlip_autopipec").joinpath("schemas", "recipe.schema.json")))


def starter_recipe(elements: list[str], *, pseudo_dir: Path | None = None) -> str:
    """The text of a commented starter recipe for ``elements``."""
    bad = [e for e in elements if e not in atomic_numbers or e == chemical_symbols[0]]
    if not elements or bad:
        raise UsageError(
            "init: give element symbols such as 'Si' or 'Ga As'"
            + (f"; not elements: {', '.join(map(repr, bad))}" if bad else "")
        )
    elements = list(dict.fromkeys(elements))
    dirs = pseudo.search_dirs(pseudo_dir, Path.cwd())
    chosen, functional = choose_pseudopotentials(elements, dirs)
    suggested = []
    for path in chosen.values():
        if path is None:
            continue
        try:
            cut = pseudo.read_header(path).suggested_ecutwfc
        except (OSError, ValueError, EOFError):
            cut = None
        if cut:
            suggested.append(cut)
    ecutwfc = max(suggested) if suggested else _DEFAULT_ECUTWFC
    metallic = any(
        (reference_states[atomic_numbers[e]] or {}).get("symmetry") in ("fcc", "bcc", "hcp")
        for e in elements
    )
    name = "-".join(e.lower() for e in elements) + "-starter"
    lines = [
        f"# yaml-language-server: $schema={schema_path()}",
        f"# Starter recipe for {' '.join(elements)} written by 'autopipec init'.",
        "# Check it with 'autopipec validate FILE', run it with 'autopipec run FILE'.",
        "# Every key and its default: 'autopipec schema' (or docs/recipe-reference.md).",
        f"name: {name}",
        "structures:",
    ]
    for el in elements:
        lines += _structure_lines(el)
    lines += [
        "  # more sources: surface, molecule, isolated_atoms (reference energies), dimer,",
        "  # trajectory (every stride-th frame); any entry also takes supercell,",
        "  # substitutions and vacancies",
        "oracle:",
        "  command: pw.x                 # or [mpirun, -np, '4', pw.x]; never run by a shell",
    ]
    if pseudo_dir is not None:
        lines.append(f"  pseudo_dir: {json.dumps(str(pseudo_dir))}")
    lines.append("  pseudopotentials:")
    for el, path in chosen.items():
        if path is None:
            lines.append(
                f"    {el}: {el}.UPF   # FILL IN: no {el} file found in "
                f"{', '.join(str(d) for d in dirs)} (SSSP, pseudo-dojo, pslibrary)"
            )
        else:
            lines.append(f"    {el}: {path.name}   # in {path.parent}")
    if functional is None and len([p for p in chosen.values() if p]) > 1:
        lines.append("  # WARNING: no functional has a file for every element: do not mix them")
    lines += [
        "  kspacing: 0.15                # 1/Å, ASE convention (no 2π); converge it",
        "  input_data:",
        "    system:",
        f"      ecutwfc: {ecutwfc:g}    # Ry, "
        + (
            "the largest the pseudopotentials suggest"
            if suggested
            else "a guess: the pseudopotentials suggest none; converge it"
        )
        + "; ecutrho defaults to 8 x",
    ]
    if metallic:
        lines += [
            "      occupations: smearing     # metals need smearing",
            "      smearing: mv",
            "      degauss: 0.02",
        ]
    lines += [
        "    electrons: {conv_thr: 1.0e-8}",
        "trainer:",
        f"  elements: [{', '.join(elements)}]",
        "  cutoff: 5.0                   # Å",
        "  max_epochs: 100",
        "  max_basis_size: 30            # ACE functions per element",
        "  test_fraction: 0.2            # held-out structures for the test errors",
        "execution:",
        "  engine: local                 # or parsl (Slurm): see docs/cluster.md",
    ]
    return "\n".join(lines) + "\n"


def write_starter(
    elements: list[str], output: Path, *, force: bool = False, pseudo_dir: Path | None = None
) -> Path:
    """Write :func:`starter_recipe` to ``output``; refuses to overwrite unless ``force``."""
    output = Path(output)
    if output.exists() and not force:
        raise UsageError(f"init: {output} exists; choose another file or pass --force")
    text = starter_recipe(elements, pseudo_dir=pseudo_dir)
    try:
        output.write_text(text)
    except OSError as exc:
        raise UsageError(f"init: cannot write {output}: {exc}") from exc
    return output
