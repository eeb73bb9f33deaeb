"""pw.x oracle: preflight, one attempt (ASE writes input / parses output), diagnosis, ladder.

Public API (the contract in docs/ARCHITECTURE.md):

* :class:`FailureClass`, :data:`PERMANENT`, :func:`diagnose` -> :class:`Diagnosis`
* :class:`AttemptRequest`, :class:`AttemptResult`, :func:`run_attempt`,
  :func:`write_attempt_input` (dry run)
* :class:`EspressoOracle` (``preflight``, ``next_request``), :func:`label_serially`
* :data:`DEFAULT_LADDERS`, :func:`default_ladder_markdown`
"""

from mlip_autopipec.oracle.attempt import (
    AttemptRequest,
    AttemptResult,
    run_attempt,
    write_attempt_input,
)
from mlip_autopipec.oracle.diagnose import (
    PERMANENT,
    RETRYABLE,
    Diagnosis,
    FailureClass,
    diagnose,
    parse_scf,
)
from mlip_autopipec.oracle.espresso import EspressoOracle, label_serially, min_interatomic_distance
from mlip_autopipec.oracle.ladder import (
    DEFAULT_LADDERS,
    DEFAULT_MAX_ATTEMPTS,
    default_ladder_markdown,
    plan_next,
    scf_trend,
    validate_ladders,
)

__all__ = [
    "DEFAULT_LADDERS",
    "DEFAULT_MAX_ATTEMPTS",
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
