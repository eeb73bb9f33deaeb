"""Active learning: explore with the current potential (MD watched by its extrapolation
grade), select what to label (D-optimal), decide when to stop. See :mod:`.loop`."""

from mlip_autopipec.explore.md import WalkerRequest, WalkerResult, run_walker
from mlip_autopipec.explore.stop import IterationFigures, StopDecision, should_stop

__all__ = [
    "IterationFigures",
    "StopDecision",
    "WalkerRequest",
    "WalkerResult",
    "run_walker",
    "should_stop",
]
