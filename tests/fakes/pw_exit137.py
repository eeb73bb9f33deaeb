#!/usr/bin/env python3
"""Fake pw.x: dies with exit code 137 (128 + SIGKILL, as MPI launchers report it), no output."""

import sys

sys.exit(137)
