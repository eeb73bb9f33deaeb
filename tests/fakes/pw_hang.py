#!/usr/bin/env python3
"""Fake pw.x: prints its banner and then hangs far past any test timeout."""

import sys
import time

sys.stdout.write("\n     Program PWSCF v.6.7MaX starts on 22Nov2026 at  8:21: 9 \n")
sys.stdout.flush()
time.sleep(3600)
