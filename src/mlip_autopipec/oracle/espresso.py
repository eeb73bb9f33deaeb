"""The pw.x oracle: preflight checks and the next attempt of a structure's history."""

from __future__ import annotations

import copy
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io.espresso import kspacing_to_grid
from ase.neighborlist import neighbor_list

from mlip_autopipec.errors import OracleError
from mlip_autopipec.oracle.attempt import (
    CHARGE_DENSITY_FILES,
    SAVE_DIR,
    AttemptRequest,
    AttemptResult,
    run_attempt,
)
from mlip_autopipec.oracle.diagnose import FailureClass
from mlip_autopipec.oracle.ladder import (
    DEFAULT_LADDERS,
    KPTS_KEY,
    KSPACING_KEY,
    RESTART_CHARGE_DENSITY,
    base_params,
    nest_input,
    plan_next,
    validate_ladders,
)
from mlip_autopipec.oracle.magnetism import is_magnetic, pw_fractions
from mlip_autopipec.oracle.preflight import core_radius, overlapping_cores, upf_header
from mlip_autopipec.oracle.theory import kpoint_record, pseudo_info, theory_key, theory_of

PSEUDO_LINK_DIR = "pseudo"


#: pw.x keys the oracle derives from the atoms' initial moments; never taken from input_data
#: (ASE would overwrite them anyway: issue 11, Fe 0.4 became 2.3).
_MAGNETIZATION_KEYS = ("system.starting_magnetization",)


def min_interatomic_distance(atoms: Atoms, cutoff: float) -> tuple[float, int, int] | None:
    """Smallest distance below ``cutoff`` (minimum image) and its pair, else None."""
    if len(atoms) < 2 and not atoms.pbc.any():
        return None
    i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    return float(d[k]), int(i[k]), int(j[k])


def kspacing_grid(atoms: Atoms, kspacing: float) -> tuple[int, int, int]:
    """The Monkhorst-Pack grid ASE's pw.x writer uses for ``kspacing`` (1/Å, no 2π)."""
    g = kspacing_to_grid(atoms, kspacing)
    return (int(g[0]), int(g[1]), int(g[2]))


def _argv(command: str | Sequence[str]) -> tuple[str, ...]:
    return tuple(shlex.split(command)) if isinstance(command, str) else tuple(map(str, command))


class EspressoOracle:
    """Turns a recipe's ``oracle`` section into attempts and plans retries.

    ``oracle_cfg`` is the recipe's ``oracle`` section with defaults filled in;
    ``pseudopotentials`` maps each element to its resolved, readable file.
    """

    def __init__(self, oracle_cfg: Mapping[str, Any], pseudopotentials: Mapping[str, Path]):
        self.cfg: dict[str, Any] = copy.deepcopy(dict(oracle_cfg))
        self.pseudopotentials = {el: Path(p) for el, p in pseudopotentials.items()}
        from mlip_autopipec.recipe.schema import schema_default

        self.argv = _argv(self.cfg.get("command") or schema_default("oracle", "command"))
        if not self.argv:
            raise OracleError("oracle.command is empty")
        retry = self.cfg.get("retry") or {}
        self.max_attempts = int(
            retry.get("max_attempts", schema_default("oracle", "retry", "max_attempts"))
        )
        # The recipe's ladders replace the built-in ladder class by class; a class the
        # recipe does not name keeps its default (an empty recipe section = all defaults).
        self.ladders: dict[str, list[dict[str, Any]]] = copy.deepcopy(
            {**DEFAULT_LADDERS, **dict(retry.get("ladders") or {})}
        )
        problems = validate_ladders(self.ladders)
        if problems:
            raise OracleError("oracle.retry: " + "; ".join(problems))
        self.timeout = self.cfg.get("timeout")
        #: ``oracle.keep``: what of pw.x's scratch stays on disk (oracle/keep.py)
        self.keep: str = str(self.cfg.get("keep") or "all")
        self.min_distance = float(
            self.cfg.get("min_distance", schema_default("oracle", "min_distance"))
        )
        self.min_core_fraction = float(
            self.cfg.get("min_core_fraction", schema_default("oracle", "min_core_fraction"))
        )
        self.koffset = tuple(int(k) for k in (self.cfg.get("koffset") or (0, 0, 0)))
        self.base = base_params(self.cfg)
        given = sorted(k for k in self.base if k.lower().startswith(_MAGNETIZATION_KEYS))
        if given:
            raise OracleError(
                f"oracle.input_data sets {', '.join(given)}: initial moments are the atoms' "
                "(μB; recipe: oracle.magnetism.default_moments or a structure's magmoms), "
                "converted to pw.x fractions of each species' valence by the oracle"
            )
        parents = {p.parent.resolve() for p in self.pseudopotentials.values()}
        #: all files in one directory: pw.x reads them there, exactly as a direct run would
        self.shared_pseudo_dir = parents.pop() if len(parents) == 1 else None

    # --- preflight ------------------------------------------------------------------

    def preflight(self, atoms: Atoms) -> AttemptResult | None:
        """A permanent failure found without running pw.x, else None.

        Checks: every element has a readable pseudopotential file; no two atoms closer
        than ``min_distance`` (minimum image convention), nor closer than
        ``min_core_fraction`` x the sum of their pseudopotentials' core radii
        (:mod:`~mlip_autopipec.oracle.preflight`).
        """
        for el in sorted(set(atoms.get_chemical_symbols())):
            path = self.pseudopotentials.get(el)
            if path is None:
                return self._permanent(
                    FailureClass.MISSING_PSEUDOPOTENTIAL, f"no pseudopotential for element {el}"
                )
            if not path.is_file() or not os.access(path, os.R_OK):
                return self._permanent(
                    FailureClass.MISSING_PSEUDOPOTENTIAL,
                    f"pseudopotential for {el} is not a readable file: {path}",
                )
        close = min_interatomic_distance(atoms, self.min_distance)
        if close is not None:
            d, i, j = close
            return self._permanent(
                FailureClass.OVERLAPPING_ATOMS,
                f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are {d:.3f} Å "
                f"apart (min_distance {self.min_distance} Å)",
            )
        return self._preflight_headers(atoms) or self._preflight_cores(atoms)

    def _preflight_headers(self, atoms: Atoms) -> AttemptResult | None:
        """What the UPF headers already say pw.x will refuse (issue 14.3): functionals
        that disagree (``xc_conflict``, unless ``input_dft`` overrides the files) and a
        fully-relativistic ultrasoft/PAW file without ``lspinorb`` (``needs_spinorbit``)."""
        from mlip_autopipec.recipe import pseudo

        headers = {}
        for el, path in self._elements_pseudos(atoms).items():
            try:
                headers[el] = upf_header(path)
            except (OSError, EOFError, ValueError):
                continue  # pw.x will say what is wrong with the file
        if "system.input_dft" not in self.base:
            clash = pseudo.functional_conflict(headers)
            if clash is not None:
                return self._permanent(FailureClass.XC_CONFLICT, clash)
        needs = pseudo.spinorbit_conflict(headers, self.base.get("system.lspinorb") is True)
        if needs is not None:
            return self._permanent(FailureClass.NEEDS_SPINORBIT, needs)
        return None

    def _preflight_cores(self, atoms: Atoms) -> AttemptResult | None:
        """Atoms whose pseudopotential cores overlap beyond ``min_core_fraction``."""
        radii = {}
        for el, path in self._elements_pseudos(atoms).items():
            try:
                radii[el] = core_radius(path)
            except OSError:
                radii[el] = None  # pw.x will say what is wrong with the file
        close = overlapping_cores(atoms, radii, self.min_core_fraction)
        if close is None:
            return None
        d, i, j, limit = close
        a, b = atoms[i].symbol, atoms[j].symbol
        return self._permanent(
            FailureClass.OVERLAPPING_ATOMS,
            f"atoms {i} ({a}) and {j} ({b}) are {d:.3f} Å apart, below {limit:.3f} Å = "
            f"min_core_fraction {self.min_core_fraction} x their pseudopotential core radii "
            f"({radii[a]:.2f} + {radii[b]:.2f} Å): the ultrasoft overlap matrix is not "
            "positive definite there and no eigensolver converges",
        )

    @staticmethod
    def _permanent(cls: str, message: str) -> AttemptResult:
        return AttemptResult(number=0, attempt_dir=None, failure_class=cls, message=message)

    # --- planning ----------------------------------------------------------------------

    def _pseudo_dir(self, atoms: Atoms, attempt_dir: Path) -> tuple[Path, dict[str, str]]:
        elements = sorted(set(atoms.get_chemical_symbols()))
        names = {el: self.pseudopotentials[el].name for el in elements}
        if self.shared_pseudo_dir is not None:
            return self.shared_pseudo_dir, names
        # files from different directories: symlink them into one directory per attempt
        link_dir = attempt_dir.parent / f"{attempt_dir.name}-{PSEUDO_LINK_DIR}"
        link_dir.mkdir(parents=True, exist_ok=True)
        for el in elements:
            link = link_dir / names[el]
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(self.pseudopotentials[el].resolve())
        return link_dir, names

    @staticmethod
    def _density_source(history: Sequence[AttemptResult]) -> Path | None:
        """The latest attempt's save folder that holds a charge density."""
        for h in reversed(history):
            if h.attempt_dir is None:
                continue
            save = Path(h.attempt_dir) / SAVE_DIR
            if any((save / name).is_file() for name in CHARGE_DENSITY_FILES):
                return save
        return None

    def next_request(
        self,
        structure_id: str,
        atoms: Atoms,
        history: Sequence[AttemptResult],
        workdir: Path,
    ) -> AttemptRequest | None:
        """The next attempt for this structure, or None: converged, permanent, or exhausted.

        The attempt runs in ``workdir / f"attempt-{n:02d}"``.
        """
        history = [h for h in history if h.number > 0]  # preflight results are not attempts
        density = self._density_source(history)
        plan = plan_next(
            self.base,
            self.ladders,
            self.max_attempts,
            history,
            density_available=density is not None,
        )
        if plan is None:
            return None
        attempt_dir = Path(workdir) / f"attempt-{plan.number:02d}"
        pseudo_dir, names = self._pseudo_dir(atoms, attempt_dir)
        kpts = plan.params.get(KPTS_KEY)
        pw_atoms, params = self.spin_setup(atoms, plan.params)
        kspacing = params.get(KSPACING_KEY)
        kpts_t = None if kpts is None else (int(kpts[0]), int(kpts[1]), int(kpts[2]))
        theory = self.theory_for(atoms, params)
        return AttemptRequest(
            structure_id=structure_id,
            atoms=pw_atoms,
            argv=self.argv,
            pseudo_dir=pseudo_dir,
            pseudopotentials=names,
            input_data=nest_input(params),
            kspacing=kspacing,
            kpts=kpts_t,
            koffset=(self.koffset[0], self.koffset[1], self.koffset[2]),
            timeout=None if self.timeout is None else float(self.timeout),
            attempt_dir=attempt_dir,
            restart_from=density if plan.restart == RESTART_CHARGE_DENSITY else None,
            step=plan.step,
            params_diff=plan.params_diff,
            number=plan.number,
            theory=theory,
            theory_key=theory_key(theory),
        )

    # --- physics -----------------------------------------------------------------------

    def _elements_pseudos(self, atoms: Atoms) -> dict[str, Path]:
        return {el: self.pseudopotentials[el] for el in sorted(set(atoms.get_chemical_symbols()))}

    def spin_setup(self, atoms: Atoms, params: Mapping[str, Any]) -> tuple[Atoms, dict[str, Any]]:
        """The atoms ASE writes and the effective flat parameters, spin included.

        The atoms' initial moments (μB, set from the recipe) become pw.x fractions of each
        species' valence (:func:`~mlip_autopipec.oracle.magnetism.pw_fractions`) on a copy
        of the atoms, which is what ASE's writer turns into ``starting_magnetization(i)``
        with one species per distinct moment; ``nspin`` is 2 when any moment is non-zero.
        (``starting_magnetization`` in input_data is refused when the oracle is made.)
        Raises OracleError when a magnetic element's pseudopotential has no valence.
        """
        out = {k: v for k, v in params.items() if not k.lower().startswith(_MAGNETIZATION_KEYS)}
        pw_atoms = atoms.copy()
        pw_atoms.calc = None
        moments = atoms.get_initial_magnetic_moments()
        if not is_magnetic(moments):
            pw_atoms.set_initial_magnetic_moments(None)
            return pw_atoms, out
        symbols = atoms.get_chemical_symbols()
        valence: dict[str, float | None] = {}
        for el, path in self._elements_pseudos(atoms).items():
            try:
                valence[el] = pseudo_info(path).z_valence
            except OSError as exc:
                raise OracleError(f"cannot read the {el} pseudopotential {path}: {exc}") from exc
        try:
            fractions = pw_fractions(symbols, moments, valence)
        except ValueError as exc:
            raise OracleError(str(exc)) from exc
        pw_atoms.set_initial_magnetic_moments(fractions)
        if not out.get("system.noncolin"):
            out["system.nspin"] = 2
        return pw_atoms, out

    def theory_for(self, atoms: Atoms, params: Mapping[str, Any]) -> dict[str, Any]:
        """The level of theory of a calculation on ``atoms`` with these effective parameters."""
        kpts = params.get(KPTS_KEY)
        kspacing = params.get(KSPACING_KEY)
        grid: tuple[int, int, int] | None
        if kpts is not None:
            grid = (int(kpts[0]), int(kpts[1]), int(kpts[2]))
        elif kspacing is not None:
            grid = kspacing_grid(atoms, float(kspacing))
        else:
            grid = (1, 1, 1)
        record = kpoint_record(
            np.asarray(atoms.cell.array),
            grid,
            None if kspacing is None else float(kspacing),
            None if kpts is None else grid,
        )
        return theory_of(params, self._elements_pseudos(atoms), kpoints=record)


def label_serially(
    oracle: EspressoOracle, structure_id: str, atoms: Atoms, workdir: Path
) -> list[AttemptResult]:
    """Preflight, then attempts one after another until converged or given up.

    A convenience for tests and the benchmark; the lifecycle runner drives
    :meth:`EspressoOracle.next_request` and :func:`run_attempt` itself.
    """
    failed = oracle.preflight(atoms)
    if failed is not None:
        return [failed]
    history: list[AttemptResult] = []
    while (req := oracle.next_request(structure_id, atoms, history, workdir)) is not None:
        history.append(run_attempt(req))
    return history
