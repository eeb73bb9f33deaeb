"""Command-line interface: argument parsing and exit codes only.

Exit codes (defined in :mod:`mlip_autopipec.errors`): 0 done, 1 the run finished with
failures to look at, 2 bad recipe or arguments (or a locked run directory), 3 internal error
(a bug: one line, the traceback in ``RUN_DIR/autopipec.log``, every structure in flight
requeued), 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sqlite3
import stat
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from mlip_autopipec import __version__
from mlip_autopipec.errors import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    AutopipecError,
    RecipeError,
    UsageError,
    exit_code_for_signal,
)

#: Where an internal error's traceback goes, in the run directory.
LOG_NAME = "autopipec.log"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="autopipec",
        description="Turn one YAML recipe into a trained ACE interatomic potential "
        "(pw.x labels, pacemaker fit). Rerunning a recipe resumes it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", help="check recipes against the schema and the physics")
    p.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE")

    p = sub.add_parser("init", help="write a commented starter recipe for some elements")
    p.add_argument("elements", nargs="+", metavar="ELEMENT")
    p.add_argument("-o", "--output", type=Path, default=Path("recipe.yaml"))
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

    p = sub.add_parser("schema", help="print the recipe reference (from the JSON schema)")
    p.add_argument("--json", action="store_true", help="print the raw JSON schema instead")

    p = sub.add_parser("run", help="label structures with pw.x and fit a potential (resumes)")
    p.add_argument("recipe", type=Path, metavar="RECIPE")
    p.add_argument("--run-dir", type=Path, help="run directory (default: runs/<recipe name>)")
    p.add_argument("--workers", type=int, help="parallel pw.x attempts (default: cores / ranks)")
    p.add_argument(
        "--stage",
        choices=["all", "label", "train"],
        default="all",
        help="'label' stops after labelling; 'train' only fits on what is labelled",
    )
    p.add_argument("--dry-run", action="store_true", help="write every input file, run nothing")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="move an existing run directory aside and start anew",
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="leave structures no longer in the recipe out of labelling and training from "
        "now on (kept in the store with their labels; back in the recipe, they are used again)",
    )
    p.add_argument(
        "--retry-failed",
        nargs="*",
        metavar="CLASS",
        help="move quarantined structures (all, or those of the given failure classes) back "
        "to pending first; their retry ladder starts again",
    )

    p = sub.add_parser("status", help="state of every structure and the potential")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("report", help="write RUN_DIR/report/index.html and report.json")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    p = sub.add_parser("export", help="export labelled structures for other tools")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--format", choices=["extxyz", "pacemaker", "asedb"], default="extxyz")
    p.add_argument("-o", "--output", type=Path, help="output file (default: in RUN_DIR/export)")
    p.add_argument(
        "--labels",
        choices=["training", "recorded"],
        default="training",
        help="'training': the labels the fit uses (a relabelled structure's new label; "
        "every frame says in_training_set); 'recorded': the run store's own labels",
    )
    return parser


def _cmd_validate(args: argparse.Namespace) -> int:
    from mlip_autopipec.recipe import check_recipe

    status = EXIT_OK
    for path in args.recipes:
        diagnostics = check_recipe(path)
        errors = [d for d in diagnostics if d.severity == "error"]
        for d in diagnostics:
            print(d, file=sys.stderr if d.severity == "error" else sys.stdout)
        if errors:
            status = EXIT_USAGE
        else:
            print(f"{path}: ok")
    return status


def _cmd_init(args: argparse.Namespace) -> int:
    from mlip_autopipec.init import write_starter

    print(write_starter(args.elements, args.output, force=args.force))
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    from mlip_autopipec.recipe import load_schema, schema_reference

    if args.json:
        print(json.dumps(load_schema(), indent=2))
    else:
        sys.stdout.write(schema_reference())
    return EXIT_OK


def _retry_failed(args: argparse.Namespace) -> None:
    """``run --retry-failed [CLASS ...]``: quarantined structures back to pending first."""
    from mlip_autopipec.lifecycle.lock import RunLock
    from mlip_autopipec.lifecycle.rundir import check_database
    from mlip_autopipec.lifecycle.runner import retry_failed
    from mlip_autopipec.lifecycle.store import DB_NAME, Store
    from mlip_autopipec.pipeline import default_run_dir
    from mlip_autopipec.recipe import load_recipe

    run_dir = (
        args.run_dir if args.run_dir is not None else default_run_dir(load_recipe(args.recipe))
    )
    moved: list[int] = []
    if (run_dir / DB_NAME).is_file():
        check_database(run_dir / DB_NAME)
        with RunLock(run_dir), Store.open(run_dir, create=False) as store:
            moved = retry_failed(store, args.retry_failed)
    print(
        f"autopipec: --retry-failed: {len(moved)} quarantined structure(s) back to pending",
        file=sys.stderr,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from mlip_autopipec.pipeline import run

    try:
        mode = os.stat(args.recipe).st_mode
    except OSError:
        mode = None  # the recipe loader says what is wrong, located
    if mode is not None and not stat.S_ISREG(mode):
        # a FIFO without a writer would block forever; <(...) can be read only once
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe?)"
        raise UsageError(
            f"{args.recipe}: is {kind}; 'autopipec run' copies its recipe into the run "
            "directory and rereads it on resume, so give a recipe file, not a pipe or <(...)"
        )

    if args.retry_failed is not None and not args.dry_run:
        _retry_failed(args)
    return run(
        args.recipe,
        run_dir=args.run_dir,
        workers=args.workers,
        stage=args.stage,
        dry_run=args.dry_run,
        fresh=args.fresh,
        prune=args.prune,
    )


def _cmd_status(args: argparse.Namespace) -> int:
    from mlip_autopipec.lifecycle.export import foreign_tables_message
    from mlip_autopipec.lifecycle.status import fit_verdict, render_table, status_json

    data = status_json(args.run_dir)
    foreign = foreign_tables_message(args.run_dir)
    if foreign is not None:
        print(f"autopipec: warning: {foreign}", file=sys.stderr)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from mlip_autopipec.lifecycle.theories import run_theories

        print(render_table(data, fit_verdict(args.run_dir), run_theories(args.run_dir)))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from mlip_autopipec.report import write_report

    index = write_report(args.run_dir)
    print(index)
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from mlip_autopipec.lifecycle.export import export

    out = export(args.run_dir, args.format, args.output, labels=args.labels)
    print(out)
    return EXIT_OK


_COMMANDS = {
    "validate": _cmd_validate,
    "init": _cmd_init,
    "schema": _cmd_schema,
    "run": _cmd_run,
    "status": _cmd_status,
    "report": _cmd_report,
    "export": _cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autopipec`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "workers", None) is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        return _COMMANDS[args.command](args)
    except RecipeError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        if not exc.diagnostics:
            print(f"autopipec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except AutopipecError as exc:
        print(f"autopipec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("autopipec: interrupted", file=sys.stderr)
        return exit_code_for_signal(2)
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug: report it as one, never a traceback
        run_dir = _run_dir_of(args)
        problem = _environment_problem(exc, run_dir)
        if problem is None:
            return _internal_error(args, exc)
        if args.command == "run" and run_dir is not None:
            from mlip_autopipec.lifecycle.runner import requeue_in_flight

            requeue_in_flight(run_dir, note=f"stopped: {type(exc).__name__}")
        print(
            f"autopipec: error: {problem}; nothing finished is lost: fix it and rerun",
            file=sys.stderr,
        )
        return EXIT_USAGE


#: OS errors that are the environment's, not a bug: say what and where, exit 2.
_ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENAMETOOLONG,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.ELOOP,
        errno.EMFILE,
        errno.EIO,
    }
)

#: sqlite3 messages that are the disk's or the file's, not a bug.
_DATABASE_PROBLEMS = (
    ("disk is full", "the disk is full"),
    ("readonly database", "the run database is read-only"),
    ("malformed", "the run database is damaged"),
    ("not a database", "the run database is damaged"),
    ("disk i/o error", "disk I/O error on the run database"),
    ("unable to open", "cannot open the run database"),
)


def _run_dir_of(args: argparse.Namespace) -> Path | None:
    from mlip_autopipec.lifecycle.lock import RunLock

    found: Path | None = RunLock.last_run_dir or getattr(args, "run_dir", None)
    return found


def _environment_problem(exc: BaseException, run_dir: Path | None) -> str | None:
    """A one-line description when ``exc`` is a full disk, a read-only or damaged file..."""
    if isinstance(exc, sqlite3.DatabaseError):
        from mlip_autopipec.lifecycle.store import DB_NAME

        text = " ".join(str(exc).split())
        where = f"{run_dir / DB_NAME}: " if run_dir is not None else ""
        for key, what in _DATABASE_PROBLEMS:
            if key in text.lower():
                return f"{where}{what} ({text})"
        return None
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        where = exc.filename if exc.filename is not None else "a file of the run"
        return f"{where}: {exc.strerror}"
    return None


def _write_log(run_dir: Path | None, exc: BaseException) -> Path:
    """Append the traceback to ``RUN_DIR/autopipec.log`` (a temp file without a run dir)."""
    text = (
        f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} autopipec {__version__}, "
        f"pid {os.getpid()}, argv {sys.argv!r}\n" + "".join(traceback.format_exception(exc))
    )
    from mlip_autopipec.lifecycle.store import DB_NAME

    if run_dir is not None and (run_dir / DB_NAME).is_file():
        try:
            with open(run_dir / LOG_NAME, "a", encoding="utf-8") as f:
                f.write(text)
            return run_dir / LOG_NAME
        except OSError:
            pass
    fd, name = tempfile.mkstemp(prefix="autopipec-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(name)


def _internal_error(args: argparse.Namespace, exc: BaseException) -> int:
    from mlip_autopipec.lifecycle.runner import requeue_in_flight

    run_dir = _run_dir_of(args)
    if args.command == "run" and run_dir is not None:
        requeue_in_flight(run_dir, note=f"internal error: {type(exc).__name__}")
    try:
        where = str(_write_log(run_dir, exc))
    except OSError:
        where = "the traceback (it could not be written to a log file)"
    message = " ".join(str(exc).split())[:300]
    print(
        f"autopipec: internal error: {type(exc).__name__}: {message} (this is a bug; please "
        f"report it with {where}; structures in flight were requeued: rerun to resume)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL
