#!/usr/bin/env python3
"""Fake pw.x: starts a normal-looking SCF, then is killed (SIGTERM) in the middle of a line."""

import os
import signal
import sys

out = sys.stdout
out.write("\n     Program PWSCF v.6.7MaX starts on 22Nov2026 at  8:21: 9 \n\n")
out.write("     Self-consistent Calculation\n\n")
out.write("     iteration #  1     ecut=    15.00 Ry     beta= 0.70\n")
out.write("     total energy              =     -15.61186533 Ry\n")
out.write("     estimated scf accuracy    <       0.10007205 Ry\n\n")
out.write("     iteration #  2     ecut=    15.00 Ry     be")
out.flush()
os.kill(os.getpid(), signal.SIGTERM)
