"""What routing a fit's execute step through the run's local executor costs.

stages.train submits ``execution.tasks.execute_fit`` to the run's thread pool and polls the
future (``future.result(timeout=FIT_POLL)`` returns as soon as the task ends, it does not sleep
out the poll period). This prints the wall time of a trivial execute step run directly and
through the pool, per call, so the overhead can be compared with a pacemaker fit (seconds to
minutes). Run: ``python bench/executor_overhead.py``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from mlip_autopipec.execution import local_executor
from mlip_autopipec.execution.tasks import execute_fit
from mlip_autopipec.stages import FIT_POLL


class _Noop:
    """A trainer whose execute step does nothing: what remains is the dispatch."""

    def execute(self, workdir: Path, profile: Any) -> None:
        return None


def main(n: int = 200) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        trainer = _Noop()
        start = time.perf_counter()
        for _ in range(n):
            execute_fit(trainer, workdir, None)
        direct = (time.perf_counter() - start) / n
        with local_executor(2) as pool:
            start = time.perf_counter()
            for _ in range(n):
                pool.submit(execute_fit, trainer, workdir, None).result(timeout=FIT_POLL)
            pooled = (time.perf_counter() - start) / n
    print(f"execute step, direct:            {direct * 1e3:8.3f} ms per fit")
    print(f"execute step, via the local pool: {pooled * 1e3:8.3f} ms per fit")
    print(f"overhead of the pool:            {(pooled - direct) * 1e3:8.3f} ms per fit")


if __name__ == "__main__":
    main()
