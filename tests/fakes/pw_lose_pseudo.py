#!/usr/bin/env python3
"""Real pw.x, but on its N-th call the pseudopotential folder vanishes first (an
infrastructure fault: a cleaned scratch or unmounted share), deterministically.

    pw_lose_pseudo.py PSEUDO_DIR N pw.x [pw.x arguments...]

The call count is kept in PSEUDO_DIR/../calls.
"""

import os
import shutil
import sys
from pathlib import Path

pseudo_dir, n, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
counter = pseudo_dir.parent / "calls"
calls = int(counter.read_text()) + 1 if counter.is_file() else 1
counter.write_text(str(calls))
if calls == n:
    shutil.rmtree(pseudo_dir)
os.execvp(argv[0], argv)
