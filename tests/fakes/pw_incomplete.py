#!/usr/bin/env python3
"""Fake pw.x: a real converged pw.x 6.7 output (tests/data/pwx/si_converged) with one defect.

    pw_incomplete.py MODE [-in espresso.pwi]

MODE is one of ``no_forces`` (the forces block removed), ``nan_energy`` / ``inf_energy``
(the ``!`` total energy printed as ``NaN`` / ``Infinity``, as gfortran writes them),
``nan_force`` (one force component ``NaN``), ``no_stress`` (the stress block removed) and
``few_forces`` (the force line of the last atom removed). Every other line, the
``convergence has been achieved`` line and ``JOB DONE.`` included, is pw.x's own. Exit 0.
"""

import re
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "data" / "pwx" / "si_converged" / "espresso.pwo"


def _cut(text: str, start: str, end: str) -> str:
    """Remove the lines from the one containing ``start`` to the one containing ``end``."""
    lines = text.splitlines(keepends=True)
    i = next(k for k, ln in enumerate(lines) if start in ln)
    j = next(k for k in range(i, len(lines)) if end in lines[k])
    return "".join(lines[:i] + lines[j + 1 :])


def _energy(text: str, value: str) -> str:
    # pw.x's format: the number right-aligned in 17 columns after '='
    return re.sub(r"^(!\s+total energy\s+=)\s+\S+( Ry)$", rf"\g<1>{value:>17}\2", text, flags=re.M)


def main() -> int:
    mode = sys.argv[1]
    text = SOURCE.read_text()
    force_lines = [ln for ln in text.splitlines() if re.match(r"^\s+atom\s+\d+ type", ln)]
    if mode == "no_forces":
        text = _cut(text, "Forces acting on atoms", "Total force =")
    elif mode == "nan_energy":
        text = _energy(text, "NaN")
    elif mode == "inf_energy":
        text = _energy(text, "Infinity")
    elif mode == "nan_force":
        last = force_lines[-1]
        text = text.replace(last, re.sub(r"\S+$", "NaN", last))
    elif mode == "no_stress":
        text = _cut(text, "Computing stress", "0.00000000   0.00000000   0.00025542")
    elif mode == "few_forces":
        text = text.replace(force_lines[-1] + "\n", "")
    else:
        sys.stderr.write(f"unknown mode {mode!r}\n")
        return 64
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
