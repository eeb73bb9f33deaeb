"""Fit an ACE potential with the real ``pacemaker`` and package the result.

Layout of one fit folder (``workdir``)::

    input.yaml  train.pckl.gzip  test.pckl.gzip  dataset.extxyz   what went in
    pacemaker.log  pacemaker.stdout  pacemaker.stderr             what pacemaker said
    output_potential.yaml  output_potential.yace  output_potential.asi
    train_pred.pckl.gzip  test_pred.pckl.gzip                     pacemaker's predictions
    potential.json                                                FitResult + baseline

After a successful fit ``workdir.parent / "current.json"`` points at ``workdir`` (relative),
which is how :func:`mlip_autopipec.trainer.calculator.load_calculator` finds the latest fit
of a run directory (``RUN_DIR/trainer/current.json``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from mlip_autopipec import __version__
from mlip_autopipec.errors import TrainerError
from mlip_autopipec.process import ProcessResult, run_process
from mlip_autopipec.trainer.baseline import (
    baseline_calculator,
    baseline_labels,
    fit_reference_energies,
)
from mlip_autopipec.trainer.config import with_defaults
from mlip_autopipec.trainer.dataset import (
    build_dataframe,
    dft_labels,
    split_ids,
    structure_id,
    write_dataframe,
    write_extxyz,
)
from mlip_autopipec.trainer.input_yaml import build_input, write_input
from mlip_autopipec.trainer.metrics import fit_errors

POTENTIAL_JSON = "potential.json"
CURRENT_JSON = "current.json"
INPUT_YAML = "input.yaml"
LOG = "pacemaker.log"
POTENTIAL_YAML = "output_potential.yaml"
POTENTIAL_YACE = "output_potential.yace"
POTENTIAL_ASI = "output_potential.asi"
TRAIN_FILE = "train.pckl.gzip"
TEST_FILE = "test.pckl.gzip"

#: Files a previous attempt in the same folder may have left; removed before a new attempt so
#: that a failed run can never be mistaken for a successful one.
_STALE = (
    POTENTIAL_YAML,
    POTENTIAL_YACE,
    POTENTIAL_ASI,
    POTENTIAL_JSON,
    "train_pred.pckl.gzip",
    "test_pred.pckl.gzip",
    "interim_potential_0.yaml",
    LOG,
)

_VERSION_RE = re.compile(r"pacemaker/pyace version:\s*(\S+)")


@dataclass(frozen=True)
class FitResult:
    """Everything about one fitted potential. Paths are absolute; errors are RMSEs.

    ``rmse_energy_mev_per_atom`` and ``rmse_forces_mev_per_ang`` map ``"train"``/``"test"``
    to meV/atom and meV/Å (force components); ``test`` is None without a test set.
    ``baseline`` holds the physics baseline and the per-element ``reference_energies`` (eV)
    that were subtracted before fitting and are added back by the calculator.
    """

    workdir: Path
    yace: Path
    asi: Path | None
    potential_yaml: Path
    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    rmse_energy_mev_per_atom: dict[str, float | None]
    rmse_forces_mev_per_ang: dict[str, float | None]
    baseline: dict[str, Any]
    pacemaker_version: str
    wall_time: float
    input_yaml: Path
    log: Path
    backend: str = "pyace"
    metrics_source: dict[str, str] = field(default_factory=dict)
    #: Things the user should know that did not stop the fit.
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; paths relative to ``workdir`` so a run directory can be moved."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = os.path.relpath(value, self.workdir) if key != "workdir" else str(value)
        out["train_ids"] = list(self.train_ids)
        out["notes"] = list(self.notes)
        out["test_ids"] = list(self.test_ids)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], workdir: Path) -> FitResult:
        """Inverse of :meth:`to_dict` for a fit folder found at ``workdir``."""
        paths = ("yace", "asi", "potential_yaml", "input_yaml", "log")
        kwargs = dict(data)
        kwargs["workdir"] = workdir
        for key in paths:
            kwargs[key] = workdir / data[key] if data.get(key) is not None else None
        kwargs["train_ids"] = tuple(data["train_ids"])
        kwargs["test_ids"] = tuple(data["test_ids"])
        kwargs["notes"] = tuple(data.get("notes", ()))
        return cls(**kwargs)


def resolve_command(command: str | Sequence[str]) -> list[str]:
    """argv of the pacemaker command; a bare name is also looked up next to this Python.

    pacemaker is installed as a console script of python-ace: when the venv is used without
    being activated its bin directory is not on PATH, but it is where ``sys.executable`` is.
    """
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    if not argv:
        raise TrainerError("trainer.command is empty")
    if os.sep not in argv[0] and shutil.which(argv[0]) is None:
        sibling = Path(sys.executable).parent / argv[0]
        if sibling.is_file():
            argv[0] = str(sibling)
    return argv


def _tool(pacemaker_argv: Sequence[str], name: str) -> str:
    """A python-ace helper (pace_yaml2yace, pace_activeset) installed beside pacemaker."""
    first = Path(pacemaker_argv[0])
    if first.parent != Path(".") and (first.parent / name).is_file():
        return str(first.parent / name)
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    return found or name


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.is_file():
        return ""
    text = path.read_text(errors="replace").splitlines()
    # pacemaker prints very long lines (whole arrays); keep the tail readable.
    return "\n".join(line[:300] for line in text[-lines:])


def _run(argv: list[str], workdir: Path, name: str, timeout: float) -> ProcessResult:
    try:
        return run_process(
            argv,
            workdir,
            stdout=workdir / f"{name}.stdout",
            stderr=workdir / f"{name}.stderr",
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise TrainerError(
            f"cannot start {argv[0]!r}: {exc}. Install python-ace (pip install "
            "python-ace) or set trainer.command to the pacemaker executable",
            workdir,
        ) from exc


def _check(result: ProcessResult, what: str, workdir: Path, log: Path | None) -> None:
    logs = ", ".join(str(p) for p in (log, result.stderr_path) if p is not None)
    if result.timed_out:
        raise TrainerError(
            f"{what} timed out after {result.wall_time:.0f} s (trainer.timeout); see {logs}",
            workdir,
        )
    if result.stopped:
        raise TrainerError(f"{what} was stopped (shutdown requested); see {logs}", workdir)
    if result.returncode != 0:
        sig = result.killed_by_signal
        how = f"was killed by signal {sig}" if sig else f"exited with code {result.returncode}"
        tail = _tail(result.stderr_path) or _tail(log)
        raise TrainerError(f"{what} {how}; see {logs}\n{tail}".rstrip(), workdir)


def _check_backend(backend: str, argv: Sequence[str], workdir: Path) -> None:
    """Fail early and clearly when ``tensorpot`` is asked for but not installed here.

    Only checked when pacemaker is this environment's own (else we cannot know).
    """
    exe = shutil.which(argv[0]) or argv[0]  # a bare name found on PATH counts too
    if backend != "tensorpot" or Path(exe).parent != Path(sys.executable).parent:
        return
    import importlib.util

    if importlib.util.find_spec("tensorpotential") is None:
        raise TrainerError(
            "trainer.backend: tensorpot needs the optional tensorpotential package "
            "(pip install 'mlip-autopipec[tensorpot]', ~2 GB with tensorflow-cpu); "
            "or use backend: pyace",
            workdir,
        )


def _only_plotting_failed(result: ProcessResult, workdir: Path, has_test: bool) -> bool:
    """True when pacemaker failed only in its final plots, with every output already saved.

    pacemaker 0.4.0rc1 draws 150-bin histograms of the force norms after writing
    ``*_pred.pckl.gzip``; numpy refuses when they all coincide (Newton's third law makes
    that so for any set of 2-atom cells). The fit itself is complete then.
    """
    if result.returncode == 0 or result.timed_out or result.stopped:
        return False
    if result.killed_by_signal or result.stderr_path is None or not result.stderr_path.is_file():
        return False
    needed = [
        POTENTIAL_YAML,
        "train_pred.pckl.gzip",
        *(["test_pred.pckl.gzip"] if has_test else []),
    ]
    if not all((workdir / name).is_file() for name in needed):
        return False
    tail = result.stderr_path.read_text(errors="replace")[-5000:]
    return "plot_analyse_error_distributions" in tail and "finite-sized bins" in tail


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def fit_potential(atoms_list: list[Atoms], trainer_cfg: dict[str, Any], workdir: Path) -> FitResult:
    """Fit an ACE potential to ``atoms_list`` with pacemaker in ``workdir``.

    ``atoms_list``: labelled structures (SinglePointCalculator with energy and forces, ASE
    units) with ``atoms.info["structure_id"]``. ``trainer_cfg``: the recipe's trainer section
    (missing keys take :data:`~mlip_autopipec.trainer.config.DEFAULTS`). ``workdir``: the fit
    folder, normally ``RUN_DIR/trainer/fit-NNN`` (see :func:`next_fit_dir`).

    Raises :class:`TrainerError` (with the log path) when pacemaker or its helpers fail, time
    out or leave no potential; nothing outside ``workdir`` is touched in that case.
    """
    start = time.monotonic()
    cfg = with_defaults(trainer_cfg)
    workdir = Path(workdir).resolve()

    if len(atoms_list) < 2:
        raise TrainerError(f"need at least 2 labelled structures to fit, got {len(atoms_list)}")
    ids = [structure_id(a, i) for i, a in enumerate(atoms_list)]
    if len(set(ids)) != len(ids):
        raise TrainerError("duplicate atoms.info['structure_id'] values in the training data")
    present = sorted({s for a in atoms_list for s in a.get_chemical_symbols()})
    elements = sorted(cfg["elements"] or present)
    unknown = sorted(set(present) - set(elements))
    if unknown:
        raise TrainerError(f"structures contain {unknown} but trainer.elements is {elements}")

    workdir.mkdir(parents=True, exist_ok=True)
    train_ids, test_ids = split_ids(ids, float(cfg["test_fraction"]), int(cfg["seed"]))
    by_id = dict(zip(ids, atoms_list, strict=True))
    train_atoms = [by_id[i] for i in train_ids]
    test_atoms = [by_id[i] for i in test_ids]

    base_cfg = dict(cfg["physics_baseline"])
    base_calc = baseline_calculator(base_cfg)
    targets = []
    for sid, atoms in zip(train_ids, train_atoms, strict=True):
        e_dft, _ = dft_labels(atoms, sid)
        if base_calc is not None:
            e_dft -= baseline_labels(base_calc, atoms)[0]
        targets.append(e_dft)
    reference = fit_reference_energies(
        [a.get_chemical_symbols() for a in train_atoms], targets, elements
    )
    baseline = {**base_cfg, "reference_energies": reference}
    if base_cfg["type"] == "ZBL":
        baseline["mode"] = "switch: pacemaker core repulsion inside the .yace"
    elif base_cfg["type"] == "LJ":
        baseline["mode"] = "additive: ase.calculators.lj.LennardJones"

    for name in _STALE:
        (workdir / name).unlink(missing_ok=True)
    write_dataframe(
        build_dataframe(train_atoms, train_ids, reference, base_calc), workdir / TRAIN_FILE
    )
    if test_ids:
        write_dataframe(
            build_dataframe(test_atoms, test_ids, reference, base_calc), workdir / TEST_FILE
        )
    write_extxyz(atoms_list, ids, test_ids, workdir / "dataset.extxyz")
    write_input(
        build_input(
            cfg,
            elements=elements,
            train_file=TRAIN_FILE,
            test_file=TEST_FILE if test_ids else None,
            metadata={"generator": f"mlip-autopipec {__version__}", "autopipec_baseline": baseline},
        ),
        workdir / INPUT_YAML,
    )

    argv = resolve_command(cfg["command"])
    _check_backend(str(cfg["backend"]), argv, workdir)
    timeout = float(cfg["timeout"])
    log = workdir / LOG
    result = _run([*argv, INPUT_YAML, "-l", LOG], workdir, "pacemaker", timeout)
    notes: list[str] = []
    if _only_plotting_failed(result, workdir, bool(test_ids)):
        notes.append(
            "pacemaker crashed while plotting its error histograms (a known pacemaker "
            "limitation when all force norms of a set are equal, e.g. a test set of 2-atom "
            f"cells) after saving the potential and predictions; see {result.stderr_path}"
        )
    else:
        _check(result, "pacemaker", workdir, log)
    if not (workdir / POTENTIAL_YAML).is_file():
        raise TrainerError(
            f"pacemaker exited normally but left no {POTENTIAL_YAML}; see {log}\n{_tail(log)}",
            workdir,
        )

    remaining = max(timeout - (time.monotonic() - start), 1.0)
    conv = _run(
        [_tool(argv, "pace_yaml2yace"), POTENTIAL_YAML, "-o", POTENTIAL_YACE],
        workdir,
        "pace_yaml2yace",
        remaining,
    )
    _check(conv, "pace_yaml2yace", workdir, None)
    if not (workdir / POTENTIAL_YACE).is_file():
        raise TrainerError(f"pace_yaml2yace left no {POTENTIAL_YACE}", workdir)

    remaining = max(timeout - (time.monotonic() - start), 1.0)
    act = _run(
        [_tool(argv, "pace_activeset"), POTENTIAL_YAML, "-d", TRAIN_FILE, "-V"],
        workdir,
        "pace_activeset",
        remaining,
    )
    _check(act, "pace_activeset", workdir, None)
    asi = workdir / POTENTIAL_ASI
    if not asi.is_file():
        raise TrainerError(f"pace_activeset left no {POTENTIAL_ASI}", workdir)

    log_text = log.read_text(errors="replace") if log.is_file() else ""
    version = m.group(1) if (m := _VERSION_RE.search(log_text)) else "unknown"
    train_err = fit_errors(workdir, log, test=False)
    test_err = fit_errors(workdir, log, test=True) if test_ids else None
    if train_err is None:
        raise TrainerError(f"no train errors found (train_pred.pckl.gzip or {log})", workdir)

    fit = FitResult(
        workdir=workdir,
        yace=workdir / POTENTIAL_YACE,
        asi=asi,
        potential_yaml=workdir / POTENTIAL_YAML,
        train_ids=tuple(train_ids),
        test_ids=tuple(test_ids),
        rmse_energy_mev_per_atom={
            "train": train_err.energy_mev_per_atom,
            "test": test_err.energy_mev_per_atom if test_err else None,
        },
        rmse_forces_mev_per_ang={
            "train": train_err.forces_mev_per_ang,
            "test": test_err.forces_mev_per_ang if test_err else None,
        },
        baseline=baseline,
        pacemaker_version=version,
        wall_time=time.monotonic() - start,
        input_yaml=workdir / INPUT_YAML,
        log=log,
        backend=str(cfg["backend"]),
        metrics_source={
            "train": train_err.source,
            **({"test": test_err.source} if test_err else {}),
        },
        notes=tuple(notes),
    )
    _write_json_atomic(workdir / POTENTIAL_JSON, fit.to_dict())
    # Only a complete fit moves the pointer: a failed rerun leaves the previous one current.
    _write_json_atomic(
        workdir.parent / CURRENT_JSON,
        {"fit_dir": workdir.name, "potential": f"{workdir.name}/{POTENTIAL_JSON}"},
    )
    return fit


def next_fit_dir(run_dir: Path) -> Path:
    """A new, unused fit folder ``RUN_DIR/trainer/fit-NNN``."""
    trainer = Path(run_dir) / "trainer"
    numbers = [
        int(p.name[4:]) for p in trainer.glob("fit-*") if p.is_dir() and p.name[4:].isdigit()
    ]
    return trainer / f"fit-{max(numbers, default=0) + 1:03d}"
