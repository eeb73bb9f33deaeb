#!/usr/bin/env python3
"""``autopipec ARGS`` with a bug injected: the oracle's ``next_request`` raises
``RuntimeError("injected bug")`` on its N-th call (``AUTOPIPEC_BUG_AT``, default 3), while
earlier attempts are still in flight. For the internal-error test (exit 3) only."""

import os
import sys

from mlip_autopipec.cli import main
from mlip_autopipec.oracle import EspressoOracle

_original = EspressoOracle.next_request
_calls = [0]


def next_request(self, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == int(os.environ.get("AUTOPIPEC_BUG_AT", "3")):
        raise RuntimeError("injected bug\nsecond line")
    return _original(self, *args, **kwargs)


EspressoOracle.next_request = next_request
sys.exit(main(sys.argv[1:]))
