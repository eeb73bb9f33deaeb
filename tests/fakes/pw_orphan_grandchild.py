#!/usr/bin/env python3
"""Fake pw.x that leaves a hard-to-kill orphan: it forks a grandchild that starts its own
session (like an MPI daemon that re-parents), ignores SIGTERM, writes its PID to
``grandchild.pid`` in the working directory and sleeps; the fake itself ignores SIGTERM
and sleeps too."""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.stdout.write("\n     Program PWSCF v.6.7MaX starts on 22Nov2026 at  8:21: 9 \n")
sys.stdout.flush()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # double fork: re-parented to init (or a subreaper)
        with open("grandchild.pid.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace("grandchild.pid.tmp", "grandchild.pid")
        time.sleep(3600)
    os._exit(0)
time.sleep(3600)
