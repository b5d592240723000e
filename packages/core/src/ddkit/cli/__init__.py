"""The ``ddkit`` command line (also ``python -m ddkit``).

Each subcommand is a module of this package with two functions, registered in
:data:`COMMANDS`:

* ``add_arguments(parser: argparse.ArgumentParser) -> None`` declares its options;
* ``run(args: argparse.Namespace) -> int`` does the work and returns the exit status; the
  first line of its docstring is the subcommand's help.

Adding one is a new module plus one line in :data:`COMMANDS`. Keep heavy imports inside
``run`` so that ``ddkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable, Sequence

from ddkit import __version__
from ddkit.cli import demo, plugins, sample, train
from ddkit.errors import DdkitError
from ddkit.registry import PLUGIN_API_VERSION

__all__ = ["COMMANDS", "AddArguments", "Run", "build_parser", "main"]

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

#: Subcommand name -> (add_arguments, run), in the order ``ddkit --help`` lists them.
COMMANDS: dict[str, tuple[AddArguments, Run]] = {
    "plugins": (plugins.add_arguments, plugins.run),
    "train": (train.add_arguments, train.run),
    "sample": (sample.add_arguments, sample.run),
    "demo": (demo.add_arguments, demo.run),
}

#: Errors that mean "the request was wrong", shown as one message instead of a traceback:
#: every error ddkit raises on purpose names the bad value and the fix already.
USER_ERRORS: tuple[type[Exception], ...] = (DdkitError,)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="ddkit", description="Denoising diffusion toolkit: components from plugins, by name."
    )
    parser.add_argument(
        "--version", action="version", version=f"ddkit {__version__} (plugin API {PLUGIN_API_VERSION})"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_arguments, run) in COMMANDS.items():
        doc = inspect.getdoc(run) or ""
        summary = doc.splitlines()[0] if doc else None
        sub = subparsers.add_parser(name, help=summary, description=doc or None)
        add_arguments(sub)
        sub.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Run | None = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return run(args)
    except USER_ERRORS as exc:
        print(f"ddkit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output piped into e.g. `head` that exited early: not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """End a torchrun process group the command joined (only if it imported the module at all)."""
    module = sys.modules.get("ddkit.training.distributed")
    if module is not None:
        module.leave()
