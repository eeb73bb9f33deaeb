"""``oracle.keep``: what of pw.x's scratch (``pwscf.save``, ``pwscf.wfc*``) stays on disk.

pw.x leaves wavefunctions and the charge density of every attempt (58 MB for 28 two-atom Si
cells). Only one thing in there is ever read again: the charge density a
``restart: charge_density`` retry step starts from, which is the newest density of a
structure that is not finished yet (the oracle's ``_density_source``). Labels come from
``espresso.pwo``, which is always kept.

- ``all``: keep everything (debugging pw.x itself).
- ``density`` (default): wavefunctions always go; the newest charge density of a structure
  stays until the structure is labelled or quarantined, then its save folders go too.
- ``none``: every save folder goes as soon as an attempt is recorded (charge-density
  restarts then start from scratch: the ladder sees no density).

The runner calls :func:`prune_structure` after recording each attempt (``finished=False``)
and after a structure is labelled or quarantined (``finished=True``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from mlip_autopipec.oracle.attempt import CHARGE_DENSITY_FILES, PREFIX, SAVE_DIR

KEEP_CHOICES = ("all", "density", "none")
#: Attempt folders, including those set aside after an interruption (``.interrupted-k``).
_ATTEMPT = re.compile(r"^attempt-(?P<n>\d+)(?P<aside>\..+)?$")
#: pw.x's per-process scratch in outdir (``pwscf.wfc1``, ``pwscf.mix2``, ...).
_SCRATCH = re.compile(rf"^{re.escape(PREFIX)}\.(wfc|mix|hub|igk|save\.wfc)\w*$")


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _remove(path: Path) -> int:
    try:
        freed = _size(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return 0
    return freed


def _has_density(save: Path) -> bool:
    return any((save / name).is_file() for name in CHARGE_DENSITY_FILES)


def _attempts(structure_dir: Path) -> list[tuple[Path, bool]]:
    """(attempt folder, set aside?), oldest first; set-aside ones before the attempt of the
    same number (an interrupted attempt-03 is redone as attempt-03)."""
    found = []
    for p in structure_dir.iterdir() if structure_dir.is_dir() else []:
        m = _ATTEMPT.match(p.name)
        if m and p.is_dir():
            found.append((int(m["n"]), m["aside"] is None, p.name, p))
    return [(p, not live) for _, live, _, p in sorted(found)]


def prune_structure(structure_dir: Path | str, keep: str, *, finished: bool) -> int:
    """Delete what ``keep`` says is not needed under one structure's folder; bytes freed.

    ``finished``: the structure is labelled or quarantined (no restart will read a density).
    Never touches anything but pw.x's scratch: inputs, outputs and logs stay.
    """
    if keep not in KEEP_CHOICES:
        raise ValueError(f"oracle.keep must be one of {', '.join(KEEP_CHOICES)}, not {keep!r}")
    if keep == "all":
        return 0
    freed = 0
    attempts = _attempts(Path(structure_dir))
    keep_density: Path | None = None
    if keep == "density" and not finished:
        # the one a charge-density restart would copy: the newest save folder with a density
        for attempt, aside in reversed(attempts):
            if not aside and _has_density(attempt / SAVE_DIR):
                keep_density = attempt / SAVE_DIR
                break
    for attempt, _ in attempts:
        for item in attempt.iterdir():
            if _SCRATCH.match(item.name):
                freed += _remove(item)
        save = attempt / SAVE_DIR
        if not save.is_dir():
            continue
        if save == keep_density:
            for item in save.iterdir():
                # wavefunctions are never read again (a restart copies the density only)
                if item.name.startswith("wfc") or (item.is_dir() and item.name.startswith("K")):
                    freed += _remove(item)
        else:
            freed += _remove(save)
    return freed
