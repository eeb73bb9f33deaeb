"""pacemaker (python-ace 0.4.0rc1) as a :class:`~mlip_autopipec.trainer.template.Trainer`.

Layout of one fit folder (``workdir``)::

    fit_inputs.json  input.yaml  train.pckl.gzip  test.pckl.gzip  what went in
    dataset.extxyz  [initial_potential.yaml]
    pacemaker.log  pacemaker.stdout  pacemaker.stderr  execute.json  what pacemaker said
    output_potential.yaml  output_potential.yace  [output_potential.asi]
    train_pred.pckl.gzip  test_pred.pckl.gzip                         pacemaker's predictions

The ``.yace`` carries the fitted per-element reference energies as its ``E0`` values (what
pacemaker's C-tilde format adds to every atom), so ``PyACECalculator(yace)`` and LAMMPS
``pair_style pace`` give total energies by themselves; an LJ baseline cannot live there and
``potential.json`` says so (``baseline.not_in_yace``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ase import Atoms

from mlip_autopipec import __version__
from mlip_autopipec.errors import TrainerError
from mlip_autopipec.fsutil import atomic_write, atomic_write_json
from mlip_autopipec.process import ProcessResult, run_process
from mlip_autopipec.trainer.baseline import (
    REF_GIVEN,
    REF_LSTSQ,
    baseline_calculator,
    baseline_labels,
    choose_reference_energies,
)
from mlip_autopipec.trainer.config import (
    continuation_fingerprint,
    settings_fingerprint,
    with_defaults,
)
from mlip_autopipec.trainer.dataset import (
    build_dataframe,
    dft_labels,
    split_ids,
    structure_id,
    write_dataframe,
    write_extxyz,
)
from mlip_autopipec.trainer.input_yaml import build_input, write_input
from mlip_autopipec.trainer.metrics import fit_errors, fit_progress
from mlip_autopipec.trainer.result import (
    EXECUTE_JSON,
    FIT_INPUTS_JSON,
    INITIAL_YAML,
    INPUT_YAML,
    LOG,
    POTENTIAL_ASI,
    POTENTIAL_JSON,
    POTENTIAL_YACE,
    POTENTIAL_YAML,
    TEST_FILE,
    TRAIN_FILE,
    FitResult,
)
from mlip_autopipec.trainer.template import TrainerProfile
from mlip_autopipec.trainer.zbl import zbl_cutoffs

#: Files a previous attempt in the same folder may have left; removed before a new attempt so
#: that a failed run can never be mistaken for a successful one.
_STALE = (
    POTENTIAL_YAML,
    POTENTIAL_YACE,
    POTENTIAL_ASI,
    POTENTIAL_JSON,
    EXECUTE_JSON,
    FIT_INPUTS_JSON,
    INITIAL_YAML,
    "train_pred.pckl.gzip",
    "test_pred.pckl.gzip",
    "interim_potential_0.yaml",
    LOG,
)

_VERSION_RE = re.compile(r"pacemaker/pyace version:\s*(\S+)")
_E0_LINE = re.compile(r"^E0: \[(?P<values>[^\]]*)\]$", re.M)
_ELEMENTS_LINE = re.compile(r"^elements: \[(?P<names>[^\]]*)\]$", re.M)
_SPECIES_BLOCK = re.compile(r"speciesblock:\s*(?P<el>[A-Z][a-z]?)\s*$", re.M)


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


def embed_reference_energies(yace: Path, reference: Mapping[str, float]) -> None:
    """Add the per-element ``reference`` energies (eV) to the ``E0`` line of a ``.yace``.

    pacemaker's C-tilde format evaluates ``E_i = E0[mu_i] + F(rho_i) + ...``; pace_yaml2yace
    writes zeros there. Afterwards the ``.yace`` alone gives the same total energies as ACE
    plus :class:`~mlip_autopipec.trainer.baseline.ReferenceEnergies`.
    """
    text = yace.read_text()
    names = _ELEMENTS_LINE.search(text)
    e0_lines = _E0_LINE.findall(text)
    if names is None or len(e0_lines) != 1:
        raise TrainerError(f"{yace}: no single 'elements:' and 'E0:' line to put E0 into")
    elements = [n.strip() for n in names["names"].split(",")]
    old = _E0_LINE.search(text)
    assert old is not None
    current = [float(v) for v in old["values"].split(",")] if old["values"].strip() else []
    if len(current) != len(elements) or set(elements) - set(reference):
        raise TrainerError(f"{yace}: E0 has {len(current)} values for elements {elements}")
    values = [c + float(reference[el]) for c, el in zip(current, elements, strict=True)]
    line = "E0: [" + ", ".join(f"{v:.17g}" for v in values) + "]"
    atomic_write(yace, text[: old.start()] + line + text[old.end() :])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainerError(f"{path}: missing or unreadable ({exc})", path.parent) from exc
    return data


def _initial_potential(
    given: Path | None, elements: Sequence[str], settings: Mapping[str, Any]
) -> tuple[Path | None, dict[str, Any] | None, str | None]:
    """The previous B-basis YAML to continue from, its potential.json record, and a note.

    ``given`` is a fit folder or a ``.yaml``. A potential for other elements, or one whose
    record has other ``settings`` than these (the stopping rule aside:
    :func:`~mlip_autopipec.trainer.config.continuation_fingerprint`), is not continued from
    (a note says why).
    """
    if given is None:
        return None, None, None
    given = Path(given)
    yaml = given / POTENTIAL_YAML if given.is_dir() else given
    if not yaml.is_file():
        return None, None, f"refit from scratch: the previous potential {yaml} does not exist"
    found = sorted(set(_SPECIES_BLOCK.findall(yaml.read_text(errors="replace"))))
    if found != sorted(elements):
        return (
            None,
            None,
            (
                f"refit from scratch: the previous potential {yaml} is for {found}, "
                f"this fit for {sorted(elements)}"
            ),
        )
    record_path = yaml.parent / POTENTIAL_JSON
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    if record is None:
        return yaml, None, None
    # settings that only say when the optimiser stops do not prevent a continuation
    if isinstance(record.get("settings"), dict):
        now = continuation_fingerprint(dict(settings))
        try:
            was = continuation_fingerprint(record["settings"])
        except TrainerError:  # settings of another version that no longer validate
            was = None
    else:  # a record without its settings: the whole fingerprint
        was, now = record.get("settings_fingerprint"), settings_fingerprint(dict(settings))
    if was != now:
        return (
            None,
            None,
            (
                f"refit from scratch: the trainer settings changed since {yaml} "
                f"(fingerprint {was or 'none'} -> {now})"
            ),
        )
    return yaml, record, None


class PacemakerTrainer:
    """pacemaker's fit, its ``.yace`` conversion and its active set, in three steps."""

    name = "pacemaker"

    def profile(self, settings: Mapping[str, Any]) -> TrainerProfile:
        """The launch profile of the (filled-in) trainer settings."""
        return TrainerProfile(
            argv=tuple(resolve_command(settings["command"])), timeout=float(settings["timeout"])
        )

    def write_inputs(
        self,
        dataset: Sequence[Atoms],
        settings: Mapping[str, Any],
        workdir: Path,
        initial_potential: Path | None = None,
        reference: Mapping[str, float] | None = None,
    ) -> None:
        """Validate the data, split it, choose reference energies and basis size, write inputs.

        ``reference`` (eV per element, e.g. pw.x isolated atoms) replaces the fitted
        reference energies; a continued refit keeps its previous ones.

        Raises :class:`TrainerError` before anything is written when the data cannot be
        fitted (fewer than 2 structures, duplicate ids, elements outside
        ``trainer.elements``, an element with no atom in the training set).
        """
        start = time.monotonic()
        cfg = with_defaults(dict(settings))
        workdir = Path(workdir).resolve()
        atoms_list = list(dataset)
        if len(atoms_list) < 2:
            raise TrainerError(f"need at least 2 labelled structures to fit, got {len(atoms_list)}")
        ids = [structure_id(a, i) for i, a in enumerate(atoms_list)]
        if len(set(ids)) != len(ids):
            raise TrainerError("duplicate atoms.info['structure_id'] values in the training data")
        present = sorted({s for a in atoms_list for s in a.get_chemical_symbols()})
        elements = sorted(cfg.get("elements") or present)
        unknown = sorted(set(present) - set(elements))
        if unknown:
            raise TrainerError(f"structures contain {unknown} but trainer.elements is {elements}")
        train_ids, test_ids = split_ids(ids, float(cfg["test_fraction"]), int(cfg["seed"]))
        by_id = dict(zip(ids, atoms_list, strict=True))
        train_atoms = [by_id[i] for i in train_ids]
        test_atoms = [by_id[i] for i in test_ids]
        environments = {
            el: sum(a.get_chemical_symbols().count(el) for a in train_atoms) for el in elements
        }
        absent = [el for el, n in environments.items() if n == 0]
        if absent:
            raise TrainerError(
                f"no training structure contains {', '.join(absent)} ({len(train_ids)} "
                "structures in the training set): label structures with every element of "
                "trainer.elements, or lower trainer.test_fraction"
            )
        fingerprint = settings_fingerprint(cfg)
        notes: list[str] = []
        start_from, previous, note = (
            _initial_potential(initial_potential, elements, cfg)
            if cfg["refit"] == "continue"
            else (None, None, None)
        )
        if note:
            notes.append(note)

        # The active set needs at least as many atomic environments of an element as the
        # basis has functions for it (pace_activeset: "Insufficient atomic environments").
        basis_size = int(cfg["max_basis_size"])
        fewest = min(environments.values())
        wanted = min(basis_size, fewest)
        if previous is not None and int(previous.get("basis_size") or 0) != wanted:
            # a basis capped by a small dataset grows with the data: a new shape, no restart
            notes.append(
                f"refit from scratch: the basis grows from {previous.get('basis_size')} to "
                f"{wanted} functions per element with the new data"
            )
            start_from, previous = None, None
        if previous is not None:
            basis_size = int(previous["basis_size"])
        elif fewest < basis_size:
            notes.append(
                f"basis capped at {fewest} functions per element (trainer.max_basis_size "
                f"{basis_size}): the training set has only {fewest} atomic environments of "
                f"{min(environments, key=lambda el: environments[el])}"
            )
            basis_size = fewest

        base_cfg = dict(cfg["physics_baseline"])
        base_calc = baseline_calculator(base_cfg)
        targets = []
        for sid, atoms in zip(train_ids, train_atoms, strict=True):
            e_dft, _ = dft_labels(atoms, sid)
            if base_calc is not None:
                e_dft -= baseline_labels(base_calc, atoms)[0]
            targets.append(e_dft)
        if previous is not None and set(previous["baseline"]["reference_energies"]) == set(
            elements
        ):
            # Continuing: keep the targets the previous coefficients were fitted to.
            reference = {k: float(v) for k, v in previous["baseline"]["reference_energies"].items()}
            method = "from the previous potential " + str(
                previous["baseline"].get("reference_method", REF_LSTSQ)
            )
        elif reference is not None:
            missing = sorted(set(elements) - set(reference))
            if missing:
                raise TrainerError(f"no reference energy given for {', '.join(missing)}")
            reference, method = {el: float(reference[el]) for el in elements}, REF_GIVEN
        else:
            choice = choose_reference_energies(train_atoms, targets, elements, float(cfg["cutoff"]))
            reference, method = choice.energies, choice.method
            if choice.note:
                notes.append(choice.note)
        baseline: dict[str, Any] = {
            **base_cfg,
            "reference_energies": reference,
            "reference_method": method,
        }
        in_yace = ["ACE", "reference energies (E0)"]
        pairs = None
        if base_cfg["type"] == "ZBL":
            pairs = zbl_cutoffs(base_cfg, elements)
            baseline["mode"] = "switch: pacemaker core repulsion inside the .yace"
            baseline["pairs"] = pairs
            in_yace.append("ZBL core")
        elif base_cfg["type"] == "LJ":
            baseline["mode"] = "additive: ase.calculators.lj.LennardJones"
            baseline["not_in_yace"] = (
                "the LJ baseline (ase.calculators.lj.LennardJones with "
                + ", ".join(
                    f"{k}={base_cfg[k]}"
                    for k in ("epsilon", "sigma", "rc", "ro", "smooth")
                    if base_cfg.get(k) is not None
                )
                + ") is added by load_calculator only: add it beside the .yace "
                "(docs/lammps.md)"
            )
        baseline["in_yace"] = in_yace

        workdir.mkdir(parents=True, exist_ok=True)
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
        if start_from is not None:
            shutil.copyfile(start_from, workdir / INITIAL_YAML)
        write_input(
            build_input(
                cfg,
                elements=elements,
                train_file=TRAIN_FILE,
                test_file=TEST_FILE if test_ids else None,
                metadata={
                    "generator": f"mlip-autopipec {__version__}",
                    "autopipec_baseline": baseline,
                },
                basis_size=basis_size,
                zbl=pairs,
                initial_potential=INITIAL_YAML if start_from is not None else None,
            ),
            workdir / INPUT_YAML,
        )
        atomic_write_json(
            workdir / FIT_INPUTS_JSON,
            {
                "trainer": self.name,
                "elements": elements,
                "train_ids": train_ids,
                "test_ids": test_ids,
                "environments": environments,
                "baseline": baseline,
                "settings": cfg,
                "settings_fingerprint": fingerprint,
                "basis_size": basis_size,
                "initial_potential": INITIAL_YAML if start_from is not None else None,
                "continued_from": str(start_from) if start_from is not None else None,
                "notes": notes,
                "prepare_seconds": time.monotonic() - start,
            },
        )

    def execute(self, workdir: Path, profile: TrainerProfile) -> None:
        """pacemaker, then pace_yaml2yace (+ the reference energies as E0), then pace_activeset.

        Raises :class:`TrainerError` (with the log path) when pacemaker or the conversion
        fails, times out or leaves no potential; a failed active set only adds a note (the
        potential is kept; extrapolation grades are then unavailable).
        """
        start = time.monotonic()
        workdir = Path(workdir).resolve()
        inputs = _read_json(workdir / FIT_INPUTS_JSON)
        argv = list(profile.argv)
        _check_backend(str(inputs["settings"]["backend"]), argv, workdir)
        log = workdir / LOG
        from mlip_autopipec.lifecycle.progress import FitLogFollower, Progress

        # pacemaker's iterations and loss as progress (stderr: a live line on a terminal)
        maxiter = int(inputs["settings"]["max_epochs"])
        with FitLogFollower(log, Progress(), max_iterations=maxiter):
            result = _run([*argv, INPUT_YAML, "-l", LOG], workdir, "pacemaker", profile.timeout)
        notes: list[str] = []
        if _only_plotting_failed(result, workdir, bool(inputs["test_ids"])):
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

        remaining = max(profile.timeout - (time.monotonic() - start), 1.0)
        conv = _run(
            [_tool(argv, "pace_yaml2yace"), POTENTIAL_YAML, "-o", POTENTIAL_YACE],
            workdir,
            "pace_yaml2yace",
            remaining,
        )
        _check(conv, "pace_yaml2yace", workdir, None)
        yace = workdir / POTENTIAL_YACE
        if not yace.is_file():
            raise TrainerError(f"pace_yaml2yace left no {POTENTIAL_YACE}", workdir)
        embed_reference_energies(yace, inputs["baseline"]["reference_energies"])

        remaining = max(profile.timeout - (time.monotonic() - start), 1.0)
        # -a: every training atom may enter the active set. By default pace_activeset
        # leaves out atoms whose force error exceeds Q3 + 1.5 IQR, and a training cell the
        # fit matches less well (e.g. after a continued refit) then got gamma 199-726.
        act = _run(
            [_tool(argv, "pace_activeset"), POTENTIAL_YAML, "-d", TRAIN_FILE, "-a", "-V"],
            workdir,
            "pace_activeset",
            remaining,
        )
        if act.stopped:
            _check(act, "pace_activeset", workdir, None)
        asi = workdir / POTENTIAL_ASI
        if act.returncode != 0 or act.timed_out or not asi.is_file():
            asi.unlink(missing_ok=True)
            why = _last_error(act.stderr_path) or (
                "timed out" if act.timed_out else f"exit code {act.returncode}"
            )
            notes.append(
                f"no active set: pace_activeset failed ({why}); the potential is kept, but "
                "extrapolation grades are unavailable for it (more or larger training "
                f"structures help); see {act.stderr_path}"
            )
        atomic_write_json(
            workdir / EXECUTE_JSON,
            {"notes": notes, "execute_seconds": time.monotonic() - start},
        )

    def read_results(self, workdir: Path) -> FitResult:
        """The :class:`FitResult` of the executed fit in ``workdir`` (nothing is run)."""
        workdir = Path(workdir).resolve()
        inputs = _read_json(workdir / FIT_INPUTS_JSON)
        executed = _read_json(workdir / EXECUTE_JSON)
        log = workdir / LOG
        log_text = log.read_text(errors="replace") if log.is_file() else ""
        version = m.group(1) if (m := _VERSION_RE.search(log_text)) else "unknown"
        test_ids = list(inputs["test_ids"])
        train_err = fit_errors(workdir, log, test=False)
        test_err = fit_errors(workdir, log, test=True) if test_ids else None
        if train_err is None:
            raise TrainerError(f"no train errors found (train_pred.pckl.gzip or {log})", workdir)
        progress = fit_progress(log_text)
        notes = [*inputs["notes"], *executed["notes"]]
        settings = inputs["settings"]
        asi = workdir / POTENTIAL_ASI
        initial = inputs.get("initial_potential")
        return FitResult(
            workdir=workdir,
            yace=workdir / POTENTIAL_YACE,
            asi=asi if asi.is_file() else None,
            potential_yaml=workdir / POTENTIAL_YAML,
            train_ids=tuple(inputs["train_ids"]),
            test_ids=tuple(test_ids),
            rmse_energy_mev_per_atom={
                "train": train_err.energy_mev_per_atom,
                "test": test_err.energy_mev_per_atom if test_err else None,
            },
            rmse_forces_mev_per_ang={
                "train": train_err.forces_mev_per_ang,
                "test": test_err.forces_mev_per_ang if test_err else None,
            },
            baseline=dict(inputs["baseline"]),
            pacemaker_version=version,
            wall_time=float(inputs["prepare_seconds"]) + float(executed["execute_seconds"]),
            input_yaml=workdir / INPUT_YAML,
            log=log,
            backend=str(settings["backend"]),
            metrics_source={
                "train": train_err.source,
                **({"test": test_err.source} if test_err else {}),
            },
            notes=tuple(notes),
            converged=progress.converged,
            iterations=progress.iterations,
            loss_history=list(progress.loss_history),
            status_message=progress.message,
            settings=dict(settings),
            settings_fingerprint=str(inputs["settings_fingerprint"]),
            basis_size=int(inputs["basis_size"]),
            initial_potential=workdir / initial if initial else None,
            reference_in_yace=True,
        )


def _last_error(path: Path | None) -> str:
    """The last line of a traceback (``ValueError: ...``), shortened; empty if none."""
    if path is None or not path.is_file():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else ""
