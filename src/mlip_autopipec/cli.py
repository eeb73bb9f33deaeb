"""Command-line interface: argument parsing and exit codes only.

Exit codes: 0 done, 1 the run finished with failures to look at, 2 bad recipe or
arguments (or a locked run directory), 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mlip_autopipec import __version__
from mlip_autopipec.errors import AutopipecError, RecipeError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


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

    p = sub.add_parser("status", help="state of every structure and the potential")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("report", help="write RUN_DIR/report/index.html and report.json")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    p = sub.add_parser("export", help="export labelled structures for other tools")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--format", choices=["extxyz", "pacemaker", "asedb"], default="extxyz")
    p.add_argument("-o", "--output", type=Path, help="output file (default: in RUN_DIR/export)")
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


def _cmd_run(args: argparse.Namespace) -> int:
    from mlip_autopipec.pipeline import run

    return run(
        args.recipe,
        run_dir=args.run_dir,
        workers=args.workers,
        stage=args.stage,
        dry_run=args.dry_run,
        fresh=args.fresh,
    )


def _cmd_status(args: argparse.Namespace) -> int:
    from mlip_autopipec.lifecycle.status import render_table, status_json

    data = status_json(args.run_dir)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(render_table(data))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from mlip_autopipec.report import write_report

    index = write_report(args.run_dir)
    print(index)
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from mlip_autopipec.lifecycle.export import export

    out = export(args.run_dir, args.format, args.output)
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
        return 130
    except BrokenPipeError:
        return EXIT_OK
