"""pw.x oracle: preflight, one attempt (ASE writes input / parses output), diagnosis, ladder.

Public API (the contract in docs/ARCHITECTURE.md):

* :class:`FailureClass`, :data:`PERMANENT`, :data:`RETRYABLE`, :data:`CLASSES`
  (:mod:`mlip_autopipec.oracle.failures`, the one table of classes and messages)
* :func:`diagnose` -> :class:`Diagnosis`
* :class:`AttemptRequest`, :class:`AttemptResult`, :func:`run_attempt`,
  :func:`write_attempt_input` (dry run)
* :class:`EspressoOracle` (``preflight``, ``next_request``), :func:`label_serially`
* :data:`DEFAULT_LADDERS`, :func:`default_ladder_markdown`

The failure table and the text diagnosis are imported eagerly; everything that needs
ASE is imported on first use, so ``mlip_autopipec.oracle.failures`` (and ``PERMANENT``)
load without ASE.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# diagnose shares its name with its submodule: it must be bound here, after the
# submodule import (which would otherwise leave the module under that name)
from mlip_autopipec.oracle.diagnose import Diagnosis, diagnose, parse_scf
from mlip_autopipec.oracle.failures import CLASSES, PERMANENT, RETRYABLE, FailureClass

if TYPE_CHECKING:
    from mlip_autopipec.oracle.attempt import (
        AttemptRequest,
        AttemptResult,
        run_attempt,
        write_attempt_input,
    )
    from mlip_autopipec.oracle.espresso import (
        EspressoOracle,
        label_serially,
        min_interatomic_distance,
    )
    from mlip_autopipec.oracle.ladder import (
        DEFAULT_LADDERS,
        default_ladder_markdown,
        plan_next,
        scf_trend,
        validate_ladders,
    )

#: name -> the submodule that defines it (imported on first access).
_LAZY = {
    "AttemptRequest": "attempt",
    "AttemptResult": "attempt",
    "run_attempt": "attempt",
    "write_attempt_input": "attempt",
    "EspressoOracle": "espresso",
    "label_serially": "espresso",
    "min_interatomic_distance": "espresso",
    "DEFAULT_LADDERS": "ladder",
    "default_ladder_markdown": "ladder",
    "plan_next": "ladder",
    "scf_trend": "ladder",
    "validate_ladders": "ladder",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CLASSES",
    "DEFAULT_LADDERS",
    "PERMANENT",
    "RETRYABLE",
    "AttemptRequest",
    "AttemptResult",
    "Diagnosis",
    "EspressoOracle",
    "FailureClass",
    "default_ladder_markdown",
    "diagnose",
    "label_serially",
    "min_interatomic_distance",
    "parse_scf",
    "plan_next",
    "run_attempt",
    "scf_trend",
    "validate_ladders",
    "write_attempt_input",
]
