"""The Python API: what the command line does, as functions (see docs/api.md).

```python
import mlip_autopipec as ap

ap.run("recipes/si_quickstart.yaml", run_dir="runs/si")   # or a dict; rerun = resume
run = ap.open_run("runs/si")
run.status()["counts"]            # {"labelled": 27, ...}, as `autopipec status --json`
frames = run.labelled()           # ASE Atoms with energy, forces, stress attached
calc = run.calculator()           # ACE (+ baseline): an ASE calculator
```

Everything heavy (ASE, pyace, the store) is imported when first used, so
``import mlip_autopipec`` stays cheap.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlip_autopipec.errors import UsageError


def _absolute_paths(recipe: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The recipe with its relative paths made absolute against ``base_dir``: the YAML file
    written for it lives elsewhere, and relative paths are relative to a recipe's file."""
    from mlip_autopipec.recipe import pseudo
    from mlip_autopipec.recipe.structures import FILE_KINDS

    def absolute(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base_dir / p).resolve())

    out = copy.deepcopy(recipe)
    for entry in out.get("structures") or []:
        if isinstance(entry, dict):
            for key in FILE_KINDS:
                if key in entry:
                    entry[key] = absolute(entry[key])
    oracle = out.get("oracle")
    if isinstance(oracle, dict):
        if oracle.get("pseudo_dir"):
            oracle["pseudo_dir"] = absolute(oracle["pseudo_dir"])
        pps = oracle.get("pseudopotentials")
        if isinstance(pps, dict):
            for symbol, entry in pps.items():
                if isinstance(entry, str) and pseudo.is_path(entry):
                    pps[symbol] = absolute(entry)
    return out


def run(
    recipe: str | Path | Mapping[str, Any],
    run_dir: str | Path | None = None,
    *,
    workers: int | None = None,
    stage: str = "all",
    fresh: bool = False,
    prune: bool = False,
    base_dir: str | Path | None = None,
) -> int:
    """Run (or resume) a recipe given as a file or as a dict; returns the exit code
    (0 done, 1 finished with failures such as quarantined structures).

    A dict is the recipe as YAML would give it; its relative paths are relative to
    ``base_dir`` (default: the working directory). Raises
    :class:`~mlip_autopipec.errors.RecipeError` (with every located problem) for a bad
    recipe, like ``autopipec run``. ``prune``: ``autopipec run --prune`` (structures the recipe
    no longer builds are left out of labelling and training; nothing is deleted).
    """
    from mlip_autopipec.pipeline import run as run_pipeline

    def go(path: Path) -> int:
        return run_pipeline(
            path,
            run_dir=None if run_dir is None else Path(run_dir),
            workers=workers,
            stage=stage,
            fresh=fresh,
            prune=prune,
        )

    if isinstance(recipe, str | Path):
        return go(Path(recipe))
    if not isinstance(recipe, Mapping):
        raise UsageError(f"run: a recipe is a path or a dict, not {type(recipe).__name__}")
    data = _absolute_paths(dict(recipe), Path(base_dir or Path.cwd()))
    name = str(data.get("name") or "recipe")
    with tempfile.TemporaryDirectory(prefix="autopipec-recipe-") as tmp:
        # the file's name gives the default recipe name; JSON is YAML
        path = Path(tmp) / (name.replace("/", "-") + ".yaml")
        path.write_text(json.dumps(data, indent=1))
        return go(path)


@dataclass(frozen=True)
class Run:
    """A run directory, opened read-only (see :func:`open_run`)."""

    path: Path

    def status(self) -> dict[str, Any]:
        """Counts per state, every structure, the potential: ``autopipec status --json``."""
        from mlip_autopipec.lifecycle.status import status_json

        return status_json(self.path)

    def labelled(self, *, include_trained: bool = True) -> list[Any]:
        """The labelled structures as ASE Atoms with a SinglePointCalculator (energy,
        free_energy, forces, stress in eV, eV/Å, eV/Å^3); ``atoms.info`` has
        ``structure_id`` and ``source``."""
        from mlip_autopipec.lifecycle.store import Store

        states = ("labelled", "trained") if include_trained else ("labelled",)
        with Store.open(self.path, create=False) as store:
            return store.labelled_atoms(states)

    def potential(self) -> Any | None:
        """The current potential's :class:`~mlip_autopipec.trainer.fit.FitResult` (paths,
        train/test errors, baseline), or None before the first fit."""
        from mlip_autopipec.errors import TrainerError
        from mlip_autopipec.trainer.calculator import load_fit

        try:
            return load_fit(self.path)
        except TrainerError:
            return None

    def calculator(self, *, extrapolation: bool = False) -> Any:
        """ASE calculator of the current potential (ACE + baseline + reference energies);
        with ``extrapolation`` it also fills ``calc.results["gamma"]`` per atom."""
        from mlip_autopipec.trainer.calculator import load_calculator

        return load_calculator(self.path, extrapolation=extrapolation)

    def report(self) -> Path:
        """Write ``report/index.html`` and ``report.json``; returns the page."""
        from mlip_autopipec.report import write_report

        return write_report(self.path)


def open_run(run_dir: str | Path) -> Run:
    """Open an existing run directory; raises UsageError when it is not one."""
    from mlip_autopipec.lifecycle.store import DB_NAME

    path = Path(run_dir)
    if not (path / DB_NAME).is_file():
        raise UsageError(
            f"{path}: not a run directory (no {DB_NAME}); start one with mlip_autopipec.run()"
        )
    return Run(path)


def labelled_structures(run_dir: str | Path) -> list[Any]:
    """Shortcut for ``open_run(run_dir).labelled()``."""
    return open_run(run_dir).labelled()


def status(run_dir: str | Path) -> dict[str, Any]:
    """Shortcut for ``open_run(run_dir).status()``."""
    return open_run(run_dir).status()
