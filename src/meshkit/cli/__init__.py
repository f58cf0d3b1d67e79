"""The `meshkit` command: one typer sub-command per area, argument handling only.

This module stays light (no typer until a command needs it): `meshkit --version` is answered
here, and cli/root.py builds the root app whose sub-CLI modules are imported on demand. Each
command turns its flags into a config object (errors name the flag) and hands it to the
module that does the work. main() maps errors to exit codes: 1 for a failure, 2 for a usage
error, and a traceback only with MESHKIT_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from meshkit import __version__

__all__ = ["main", "run_loop", "setup_logging"]


def __getattr__(name: str) -> Any:
    if name == "app":  # the root typer app, built on first use (meshkit.cli.root)
        from meshkit.cli.root import app

        return app
    if name in ("run_loop", "setup_logging"):  # the process runtime, for the sub-CLIs
        from meshkit.base import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:  # the fast path: no typer, nothing but the version
        print(f"meshkit {__version__}")
        return 0
    import traceback

    import typer

    # typer 0.29 carries its own click; its exceptions are only importable from here (pinned).
    from typer._click.exceptions import ClickException, UsageError

    from meshkit.base.errors import MeshkitError
    from meshkit.cli.root import app

    debug = os.environ.get("MESHKIT_DEBUG", "") not in ("", "0")
    try:
        rv = app(args=args, prog_name="meshkit", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except UsageError as exc:  # also NoArgsIsHelpError: help was shown, still a usage error
        exc.show()
        return 2
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        return 130
    except MeshkitError as exc:
        if debug:
            traceback.print_exc()
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug:
            raise
        print(
            f"Error: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in meshkit; run again with MESHKIT_DEBUG=1 for the traceback.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
