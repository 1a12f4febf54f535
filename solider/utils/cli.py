"""What every entry point shares on the command line: one parsing rule, one base-config rule, and
one way of reporting a user's mistake.

- Options (``--flag``) and ``key=value`` overrides may come in any order (:func:`parse_args`).
- Without ``--config``, overrides apply to the entry point's *demo* config, never to the schema's
  defaults alone (:func:`resolve_base_config`): the schema's defaults are the GPU recipe, and one
  ``output_dir=x`` must not turn a CPU demo into a 65,536-prototype Swin-T at batch 48.
- A user error (config, data layout, missing file, bad checkpoint) prints one ``error:`` line and
  exits with status 2; ``SOLIDER_DEBUG=1`` shows the traceback as well (:func:`run_entry`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

USER_ERROR_EXIT = 2
DEBUG_ENV = "SOLIDER_DEBUG"


class UserError(ValueError):
    """Something the user can fix (an argument, a file, a data layout), with the fix in the message.

    A ValueError so that callers catching the errors these replaced keep working.
    """


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions an entry point reports as one line instead of a traceback."""
    from solider.checkpoint import CheckpointError
    from solider.config import ConfigError
    from solider.data.images import ImageDecodeError
    from solider.utils.data_agreement import DataMismatchError
    from solider.utils.output_dir import ExistingResults, OutputDirInUse, OutputPathError
    from solider.utils.training import NonFiniteLossError

    return (UserError, ConfigError, CheckpointError, NonFiniteLossError, ImageDecodeError,
            ExistingResults, OutputDirInUse, OutputPathError, DataMismatchError,
            FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def run_entry(main: Callable[[], Any], prog: str | None = None) -> None:
    """Call an entry point's ``main()``; turn a user error into one line on stderr and exit 2.

    The traceback of a user error only helps when debugging the code itself: ``SOLIDER_DEBUG=1``
    re-raises it. Anything else (a bug) keeps its traceback.
    """
    try:
        main()
    except user_error_types() as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        name = prog or Path(sys.argv[0]).name
        print(f"{name}: error: {exc}\n(run with {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT) from None


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Options and positional ``key=value`` overrides in any order (``seed=3 --config F a.b=2``)."""
    return parser.parse_intermixed_args(argv)


def module_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a tool run as ``python -m module``: its docstring is the help, kept as written."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_size(text: str) -> tuple[int, int]:
    """An argparse ``type`` for image sizes written ``HEIGHTxWIDTH`` (``256x128``)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 256x128, got {text!r}") from None
    return h, w


def resolve_base_config(args: argparse.Namespace, demo: Path, official: str) -> str:
    """Apply the base-config rule to parsed ``args`` (sets ``args.config``); return a description
    of where the config comes from, for the run summary.

    ``--config F``: F, then the overrides. No ``--config``: the demo config ``demo``, then the
    overrides (``official`` names the file of the full recipe, for the message).
    """
    overrides = list(getattr(args, "overrides", []) or [])
    listed = f"; overrides: {' '.join(overrides)}" if overrides else "; no overrides"
    if args.config is not None:
        return f"{args.config}{listed}"
    if not demo.is_file():
        raise UserError(f"no --config given and the demo config {demo} is missing; pass --config "
                        f"(e.g. --config {official})")
    args.config = str(demo)
    try:
        shown = demo.relative_to(Path.cwd())
    except ValueError:
        shown = demo
    return (f"{shown} (the demo: no --config given; the full recipe is --config {official}){listed}")


def reject_overrides(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the flags of an entry point without a config schema (export, infer); a ``key=value``
    token gets a message saying so instead of argparse's 'unrecognized arguments'."""
    args, rest = parser.parse_known_args(argv)
    if rest:
        tokens = " ".join(rest)
        hint = (" (this command takes no key=value config overrides; its options are listed by --help)"
                if any("=" in t and not t.startswith("-") for t in rest) else "")
        parser.error(f"unrecognized arguments: {tokens}{hint}")
    return args
