"""One pw.x attempt: ASE writes the input and parses the output, process.py runs pw.x.

:func:`run_attempt` is module level and takes one picklable :class:`AttemptRequest`, so it
runs unchanged in a thread pool or on a Parsl worker. It never raises for anything pw.x
does: every outcome is an :class:`AttemptResult` with exactly one failure class.
"""

from __future__ import annotations

import math
import shlex
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.espresso import EspressoProfile, EspressoTemplate

from mlip_autopipec.errors import OracleError
from mlip_autopipec.oracle.diagnose import (
    Diagnosis,
    FailureClass,
    diagnose,
    parse_printed,
    parse_scf,
    parse_version,
)
from mlip_autopipec.oracle.ladder import RESTART_CHARGE_DENSITY, RESTART_SCRATCH
from mlip_autopipec.oracle.magnetism import parse_magnetization
from mlip_autopipec.process import run_process

#: pw.x's prefix and outdir inside an attempt directory (the oracle manages both so that
#: a charge-density restart knows where the previous density is).
PREFIX = "pwscf"
OUTDIR = "."
SAVE_DIR = f"{PREFIX}.save"
CHARGE_DENSITY_FILES = ("charge-density.dat", "charge-density.hdf5")
#: Seconds left to pw.x between its own ``max_seconds`` stop and our hard timeout, so that
#: it can write the charge density a walltime restart continues from.
MAX_SECONDS_MARGIN = 0.1
#: Largest occupation (0..1) of the highest band that a smeared label may have; above
#: it ``nbnd`` is too small (aiida-quantumespresso's ``sanity_check_insufficient_bands``
#: uses the same 0.005).
MAX_HIGHEST_BAND_OCCUPATION = 0.005


@dataclass(frozen=True)
class AttemptRequest:
    """Everything one attempt needs; picklable (plain data, Atoms, Paths)."""

    structure_id: str
    atoms: Atoms
    argv: tuple[str, ...]
    pseudo_dir: Path
    pseudopotentials: dict[str, str]  # element -> file name inside pseudo_dir
    input_data: dict[str, dict[str, Any]]  # effective nested pw.x namelists
    kspacing: float | None
    kpts: tuple[int, int, int] | None
    koffset: tuple[int, int, int]
    timeout: float | None
    attempt_dir: Path
    restart_from: Path | None = None  # previous attempt's pwscf.save (charge_density restart)
    step: dict[str, Any] | None = None
    params_diff: dict[str, Any] = field(default_factory=dict)
    number: int = 1
    #: the level of theory of this attempt (oracle/theory.py), copied into the result
    theory: dict[str, Any] | None = None
    theory_key: str | None = None


def _json_safe(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class AttemptResult:
    """The outcome of one attempt (ASE units: eV, eV/Å, eV/Å^3).

    ``step`` is the ladder step applied (None for the first attempt), ``params_diff`` the
    effective parameters that differ from the recipe (dotted pw.x keys, ``kspacing``/
    ``kpts``; a removed key maps to None). ``message`` is the exact pw.x message line.
    """

    number: int
    attempt_dir: Path | None
    failure_class: str
    message: str
    step: dict[str, Any] | None = None
    params_diff: dict[str, Any] = field(default_factory=dict)
    energy: float | None = None
    free_energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None  # Voigt order xx yy zz yz xz xy, as ASE
    kgrid: tuple[int, int, int] | None = None
    n_scf: int = 0
    scf_accuracy_ev: float | None = None  # last estimated SCF accuracy
    scf_history_ev: tuple[float, ...] = ()
    wall_time: float = 0.0
    pw_version: str | None = None
    returncode: int | None = None
    restart: str = RESTART_SCRATCH
    structure_id: str = ""
    #: values pw.x printed that a ladder step may read (``nbnd``, ``highest_band_occupation``)
    printed: dict[str, Any] = field(default_factory=dict)
    magmoms: tuple[float, ...] | None = None  # final moment per site (μB), spin-polarised runs
    total_magmom: float | None = None  # final total magnetization (μB per cell)
    theory: dict[str, Any] | None = None  # oracle/theory.py: what the label was computed with
    theory_key: str | None = None  # hash + summary of ``theory`` without the k-points

    @property
    def ok(self) -> bool:
        """True when pw.x converged and the results were parsed."""
        return self.failure_class == FailureClass.CONVERGED

    @property
    def scf_accuracy(self) -> float | None:
        """Alias of :attr:`scf_accuracy_ev` (eV)."""
        return self.scf_accuracy_ev

    @property
    def scf_history(self) -> tuple[float, ...]:
        """Alias of :attr:`scf_history_ev` (eV)."""
        return self.scf_history_ev

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (arrays -> lists, Paths -> str); inverse of from_dict."""
        return {f.name: _json_safe(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttemptResult:
        """Rebuild a result stored with :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        if kw.get("attempt_dir") is not None:
            kw["attempt_dir"] = Path(kw["attempt_dir"])
        for key in ("forces", "stress"):
            if kw.get(key) is not None:
                kw[key] = np.asarray(kw[key], dtype=float)
        if kw.get("kgrid") is not None:
            kw["kgrid"] = tuple(int(k) for k in kw["kgrid"])
        kw["scf_history_ev"] = tuple(float(x) for x in kw.get("scf_history_ev") or ())
        kw["params_diff"] = dict(kw.get("params_diff") or {})
        kw["printed"] = dict(kw.get("printed") or {})
        if kw.get("magmoms") is not None:
            kw["magmoms"] = tuple(float(m) for m in kw["magmoms"])
        if kw.get("total_magmom") is not None:
            kw["total_magmom"] = float(kw["total_magmom"])
        return cls(**kw)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_kgrid(pwi_text: str) -> tuple[int, int, int] | None:
    """The Monkhorst-Pack grid ASE wrote (K_POINTS automatic), or (1,1,1) for gamma."""
    lines = pwi_text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().upper().startswith("K_POINTS"):
            if "gamma" in line.lower():
                return (1, 1, 1)
            if "automatic" in line.lower() and i + 1 < len(lines):
                parts = lines[i + 1].split()
                try:
                    return (int(parts[0]), int(parts[1]), int(parts[2]))
                except (IndexError, ValueError):
                    return None
    return None


def _copy_density(src: Path, dst: Path) -> bool:
    """Copy a previous save folder without wavefunctions; True if a density was copied."""
    if not any((src / name).is_file() for name in CHARGE_DENSITY_FILES):
        return False
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        # wavefunctions are not needed for startingpot='file' and dominate the size
        if item.is_file() and not item.name.startswith("wfc"):
            shutil.copy2(item, dst / item.name)
    return True


def _result(req: AttemptRequest, diag: Diagnosis, restart: str, **kw: Any) -> AttemptResult:
    return AttemptResult(
        number=req.number,
        attempt_dir=req.attempt_dir,
        failure_class=diag.failure_class,
        message=diag.message,
        step=req.step,
        params_diff=dict(req.params_diff),
        restart=restart,
        structure_id=req.structure_id,
        theory=req.theory,
        theory_key=req.theory_key,
        **kw,
    )


def _prepare(req: AttemptRequest) -> tuple[EspressoTemplate, EspressoProfile, str]:
    """Create a clean attempt directory, copy a restart density, let ASE write the input.

    Returns the template, the profile and the effective restart mode (``scratch`` when
    no density could be copied). Raises OSError/ValueError/KeyError/TypeError.
    """
    directory = Path(req.attempt_dir)
    template = EspressoTemplate()
    profile = EspressoProfile(command=shlex.join(req.argv), pseudo_dir=str(req.pseudo_dir))
    restart = RESTART_SCRATCH
    input_data = {sec: dict(vals) for sec, vals in req.input_data.items()}
    control = input_data.setdefault("control", {})
    control["outdir"] = OUTDIR
    control["prefix"] = PREFIX
    # every label needs forces and stress: the tool owns these keys (the recipe cannot
    # turn them off), also for configs that did not come through load_recipe
    control["tprnfor"] = True
    control["tstress"] = True
    if _smeared(input_data) and "verbosity" not in control:
        # occupations are printed only with verbosity='high': needed to see whether the
        # highest band is empty (too few bands); printing only, the numbers are unchanged
        control["verbosity"] = "high"
    if req.timeout is not None and "max_seconds" not in control:
        # pw.x stops cleanly and writes its density before our hard kill
        control["max_seconds"] = max(1.0, float(req.timeout) * (1 - MAX_SECONDS_MARGIN))
    if directory.exists():
        # a rerun of an interrupted attempt starts clean: no stale output is diagnosed
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    if req.restart_from is not None and _copy_density(Path(req.restart_from), directory / SAVE_DIR):
        restart = RESTART_CHARGE_DENSITY
        input_data.setdefault("electrons", {})["startingpot"] = "file"
    else:
        input_data.get("electrons", {}).pop("startingpot", None)
    parameters: dict[str, Any] = {
        "input_data": input_data,
        "pseudopotentials": dict(req.pseudopotentials),
        "koffset": tuple(req.koffset),
    }
    if req.kpts is not None:
        parameters["kpts"] = tuple(req.kpts)
    elif req.kspacing is not None:
        parameters["kspacing"] = req.kspacing
    template.write_input(profile, directory, req.atoms, parameters, ["energy", "forces", "stress"])
    return template, profile, restart


def write_attempt_input(request: AttemptRequest) -> Path:
    """Write the attempt's ``espresso.pwi`` (as :func:`run_attempt` would) without running.

    For ``--dry-run``. Returns the input file's path; raises :class:`OracleError` (with
    the attempt directory and the cause) when it cannot be written.
    """
    try:
        template, _, _ = _prepare(request)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OracleError(f"{request.attempt_dir}: cannot write the pw.x input: {exc}") from exc
    return Path(request.attempt_dir) / template.inputname


def run_attempt(request: AttemptRequest) -> AttemptResult:
    """Write the input with ASE, run pw.x through process.run_process, diagnose, parse.

    Never raises for pw.x failures (those are failure classes); an unusable attempt
    directory is reported as ``crashed`` with the OS error.
    """
    req = request
    directory = Path(req.attempt_dir)
    try:
        template, profile, restart = _prepare(req)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _result(
            req,
            Diagnosis(FailureClass.CRASHED, f"could not write the pw.x input: {exc}"),
            RESTART_SCRATCH,
        )

    argv = profile.get_command(template.inputname)
    pwo = directory / template.outputname
    err = directory / template.errorname
    start = time.monotonic()
    try:
        proc = run_process(argv, directory, stdout=pwo, stderr=err, timeout=req.timeout)
        returncode: int | None = proc.returncode
        timed_out = proc.timed_out
        wall = proc.wall_time
    except OSError as exc:
        err.write_text(f"{exc}\n")
        returncode, timed_out, wall = None, False, time.monotonic() - start

    pwo_text = _read_text(pwo)
    err_text = _read_text(err)
    crash_text = _read_text(directory / "CRASH")
    diag = diagnose(returncode, pwo_text, err_text, crash_text, timed_out)
    scf = parse_scf(pwo_text)
    common: dict[str, Any] = {
        "kgrid": read_kgrid(_read_text(directory / template.inputname)),
        "n_scf": scf.n_scf,
        "scf_accuracy_ev": scf.scf_accuracy_ev,
        "scf_history_ev": scf.scf_history_ev,
        "wall_time": wall,
        "pw_version": parse_version(pwo_text),
        "returncode": returncode,
        "printed": parse_printed(pwo_text),
    }
    if not diag.ok:
        return _result(req, diag, restart, **common)
    try:
        props = template.read_results(directory)
    except Exception as exc:  # noqa: BLE001 - ASE's parser raises many types on bad output
        bad = Diagnosis(
            FailureClass.INCOMPLETE_OUTPUT, f"converged but the output cannot be parsed: {exc}"
        )
        return _result(req, bad, restart, **common)
    label, problem = complete_label(props, len(req.atoms), stress_requested=True)
    if problem is not None:
        return _result(req, Diagnosis(FailureClass.INCOMPLETE_OUTPUT, problem), restart, **common)
    occupation = common["printed"].get("highest_band_occupation")
    if _smeared(req.input_data) and occupation is not None:
        if occupation > MAX_HIGHEST_BAND_OCCUPATION:
            nbnd = common["printed"].get("nbnd")
            bands = Diagnosis(
                FailureClass.TOO_FEW_BANDS,
                f"converged, but the highest band ({nbnd}) holds occupation {occupation:g} "
                f"> {MAX_HIGHEST_BAND_OCCUPATION:g}: too few bands",
            )
            return _result(req, bands, restart, **common)
    total_magmom, magmoms = parse_magnetization(pwo_text)
    return _result(
        req, diag, restart, magmoms=magmoms, total_magmom=total_magmom, **label, **common
    )


def _smeared(input_data: Mapping[str, Mapping[str, Any]]) -> bool:
    for name, values in input_data.items():
        if str(name).lower() == "system" and isinstance(values, Mapping):
            return str(values.get("occupations", "")).lower() == "smearing"
    return False


def _truthy(input_data: Mapping[str, Mapping[str, Any]], section: str, key: str) -> bool:
    for name, values in input_data.items():
        if str(name).lower() == section and isinstance(values, Mapping):
            return bool(values.get(key, False))
    return False


def complete_label(
    props: Mapping[str, Any], natoms: int, *, stress_requested: bool
) -> tuple[dict[str, Any], str | None]:
    """The label fields from ASE's parsed results, or the reason they are not a label.

    A label needs a finite energy and free energy, a finite force on every one of the
    ``natoms`` atoms and, when ``tstress`` was set, a finite stress. Anything else is an
    output that claims convergence without the numbers (a truncated block, a ``NaN`` or
    ``Infinity`` printed by pw.x): class ``incomplete_output``, never a label.
    """
    fields_: dict[str, Any] = {}
    for key in ("energy", "free_energy"):
        value = props.get(key, props.get("energy")) if key == "free_energy" else props.get(key)
        if value is None:
            return {}, f"converged but incomplete output: no {key.replace('_', ' ')}"
        number = float(value)
        if not math.isfinite(number):
            return {}, f"converged but incomplete output: {key.replace('_', ' ')} is {number}"
        fields_[key] = number
    forces = props.get("forces")
    if forces is None:
        return {}, "converged but incomplete output: no forces block"
    try:
        f = np.asarray(forces, dtype=float)
    except (TypeError, ValueError):
        return {}, "converged but incomplete output: the forces block cannot be read"
    if f.shape != (natoms, 3):
        have = f.shape[0] if f.ndim == 2 else 0
        return {}, f"converged but incomplete output: forces for {have} of {natoms} atoms"
    if not np.isfinite(f).all():
        atom = int(np.argwhere(~np.isfinite(f))[0][0]) + 1
        return {}, f"converged but incomplete output: the force on atom {atom} is not finite"
    fields_["forces"] = f
    stress = props.get("stress")
    if stress is None:
        if stress_requested:
            return {}, "converged but incomplete output: tstress was set but no stress block"
        fields_["stress"] = None
    else:
        s = np.asarray(stress, dtype=float)
        if s.shape != (6,) or not np.isfinite(s).all():
            return {}, "converged but incomplete output: the stress is not finite"
        fields_["stress"] = s
    return fields_, None
