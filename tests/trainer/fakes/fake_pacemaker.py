"""A fake ``pacemaker`` for fault injection only (real pacemaker cannot fail on demand).

Usage: python fake_pacemaker.py MODE input.yaml -l LOG
MODE: exit3 (log a traceback, exit 3), kill (SIGKILL itself mid-run), nopot (exit 0 without
writing output_potential.yaml), hang (sleep until killed by the trainer's timeout).
"""

import os
import signal
import sys
import time


def main() -> int:
    mode = sys.argv[1]
    log = sys.argv[sys.argv.index("-l") + 1] if "-l" in sys.argv else "log.txt"
    with open(log, "w") as fh:
        fh.write("I - Start pacemaker\nI - pacemaker/pyace version: fake\n")
    if mode == "exit3":
        print("Traceback (most recent call last):\nValueError: fake failure", file=sys.stderr)
        return 3
    if mode == "kill":
        with open("output_potential.yaml.partial", "w") as fh:
            fh.write("species:\n")
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "nopot":
        return 0
    if mode == "hang":
        time.sleep(600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
