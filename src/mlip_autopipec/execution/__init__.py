"""Where attempts run: a local thread pool by default, parsl when the recipe asks.

The science (``run_attempt``) never knows which one: the runner only calls
``executor.submit(run_attempt, request)`` and collects futures.
"""

from __future__ import annotations

import importlib
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, cast

from mlip_autopipec.errors import UsageError
from mlip_autopipec.execution.local import default_workers, local_executor, ranks_per_task

__all__ = ["default_workers", "local_executor", "make_executor", "ranks_per_task"]


def make_executor(
    execution_cfg: dict[str, Any], workers: int, *, run_dir: Path | None = None
) -> AbstractContextManager[Executor]:
    """An executor for ``execution_cfg["engine"]`` (``local`` or ``parsl``).

    ``local``: a thread pool of ``workers`` threads. ``parsl``: imported only when asked
    (``parsl_engine.make_parsl_executor(execution_cfg, workers, run_dir=RUN_DIR/parsl)``),
    so the cluster extra stays optional. Both are context managers that shut down on exit.
    """
    from mlip_autopipec.recipe.schema import schema_default

    engine = execution_cfg.get("engine") or schema_default("execution", "engine")
    if engine == "local":
        return local_executor(workers)
    if engine == "parsl":
        try:
            module = importlib.import_module("mlip_autopipec.execution.parsl_engine")
        except ImportError as exc:
            raise UsageError(
                f"execution.engine: parsl: cannot load the parsl engine ({exc}); "
                "install it with: pip install 'mlip-autopipec[cluster]'"
            ) from exc
        parsl_dir = run_dir / "parsl" if run_dir is not None else None
        return cast(
            AbstractContextManager[Executor],
            module.make_parsl_executor(execution_cfg, workers, run_dir=parsl_dir),
        )
    raise UsageError(f"execution.engine: unknown engine {engine!r} (use 'local' or 'parsl')")
