"""Parsl with the local provider: real functions and a real pw.x attempt through a real DFK."""

from __future__ import annotations

from pathlib import Path

import pytest
from execution_helpers import fast_parsl_cfg, si_request

from procs import processes

pytest.importorskip("parsl", reason="the cluster extra (parsl) is not installed")

from mlip_autopipec.execution import make_executor  # noqa: E402
from mlip_autopipec.execution.parsl_engine import (  # noqa: E402
    is_lost_worker_error,
    make_parsl_executor,
)
from mlip_autopipec.process import ProcessResult, run_process  # noqa: E402


def _leftovers(root: Path) -> list[str]:
    """Parsl processes of this test still alive: the interchange (it keeps its log open under
    the run directory) and the worker pools (the run directory is in their arguments). Those
    of tests running in parallel in another pytest worker use other folders."""
    where = str(root)
    return [
        f"{p.pid} {p.args}"
        for p in processes()
        if ("interchange" in p.args or "process_worker_pool" in p.args)
        and (where in p.args or any(f.startswith(where) for f in p.open_files()))
    ]


def test_local_provider_runs_real_functions_and_cleans_up(
    tmp_path: Path,
) -> None:
    with make_parsl_executor(fast_parsl_cfg("local"), 2, run_dir=tmp_path / "parsl") as ex:
        futures = [
            ex.submit(
                run_process,
                ["bash", "-c", f"echo task {i} on $(hostname)"],
                tmp_path / f"w{i}",
                stdout=tmp_path / f"w{i}.out",
            )
            for i in range(3)
        ]
        results = [f.result(timeout=120) for f in futures]
        # errors raised on the worker come back as themselves, and are not "lost workers"
        bad = ex.submit(run_process, [], tmp_path)
        with pytest.raises(ValueError, match="empty command") as info:
            bad.result(timeout=60)
        assert not is_lost_worker_error(info.value)
        running = _leftovers(tmp_path)  # the check below can see them
        assert any("interchange" in p for p in running), running
        assert any("process_worker_pool" in p for p in running), running
    for i, result in enumerate(results):
        assert isinstance(result, ProcessResult)
        assert result.returncode == 0
        assert (tmp_path / f"w{i}.out").read_text().startswith(f"task {i} on ")
    # Parsl wrote its logs where it was told, not in the current directory
    assert list((tmp_path / "parsl").glob("*/parsl.log"))
    assert not Path("runinfo").exists()
    assert _leftovers(tmp_path) == []


def test_exception_inside_the_block_still_stops_parsl(
    tmp_path: Path,
) -> None:
    with (
        pytest.raises(RuntimeError, match="runner blew up"),
        make_parsl_executor(fast_parsl_cfg("local"), 1, run_dir=tmp_path) as ex,
    ):
        ex.submit(run_process, ["sleep", "30"], tmp_path / "s").done()
        raise RuntimeError("runner blew up")
    assert _leftovers(tmp_path) == []
    assert not _sleeping_in(tmp_path / "s")


def _sleeping_in(folder: Path) -> list[str]:
    """Live ``sleep`` processes whose working directory is ``folder`` (this test's task;
    other tests, possibly running in parallel, sleep elsewhere)."""
    where = str(folder.resolve())
    return [
        p.args for p in processes() if p.args.split(" ", 1)[0].endswith("sleep") and p.cwd == where
    ]


def test_cancelled_future_is_forgotten(tmp_path: Path) -> None:
    with make_parsl_executor(fast_parsl_cfg("local"), 1, run_dir=tmp_path) as ex:
        future = ex.submit(run_process, ["sleep", "20"], tmp_path / "s")
        assert future.cancel()
        assert future.cancelled()


@pytest.mark.pwx
def test_pwx_attempt_through_local_parsl_matches_a_direct_run(tmp_path: Path, pwx: None) -> None:
    from mlip_autopipec.oracle import run_attempt

    direct = run_attempt(si_request(tmp_path / "direct" / "attempt-01", strain=0.01))
    cfg = fast_parsl_cfg("local")
    with make_executor(cfg, 1, run_dir=tmp_path / "run") as ex:
        future = ex.submit(run_attempt, si_request(tmp_path / "parsl" / "attempt-01", strain=0.01))
        result = future.result(timeout=180)
    assert direct.ok and result.ok, (direct.message, result.message)
    assert result.energy == pytest.approx(direct.energy, abs=1e-8)
    assert result.forces == pytest.approx(direct.forces, abs=1e-8)
    assert (tmp_path / "run" / "parsl").is_dir()
