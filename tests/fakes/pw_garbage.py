#!/usr/bin/env python3
"""Fake pw.x: writes random bytes instead of an output and exits 0."""

import os
import sys

sys.stdout.buffer.write(os.urandom(4096))
sys.stdout.buffer.write(b"\x00\xff convergence has\xfe\n")
sys.stdout.flush()
