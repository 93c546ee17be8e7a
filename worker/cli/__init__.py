"""The ``molecule-connect`` command line (Typer), one module per command group.

- ``serve``: ``run`` (worker + ensured connector), ``worker``, ``start``.
- ``connectors``: ``status`` and the control plane (``pause``, ``resume``, ``drain``, ``cursor``, ``dead-letters``,
  ``configure``).
- ``fleets``: ``fleet apply``, ``fleet status``.
- ``debug``: replay debugging (``replay``, ``history export``).
- ``dev``: ``backends`` (the backends this worker can run, plugins included, with their options),
  ``codec-server``, ``dev-platform`` (with ``create-workspace``) and ``demo``.
- ``schema``: the JSON Schemas of the connector's input, updates, signals and queries (``worker.schema``).
- ``server``: the embedded Temporal dev server: ``server info`` (``--env`` for the ``temporal`` CLI), ``start``,
  ``stop``.
- ``common``: shared options (the ``temporal`` CLI's connection flags: ``connection_options``), user errors,
  connecting and serving a worker.

Every user error prints one line on stderr that says what to do, and exits 2. A connector control that no worker
answers within ``--timeout`` prints one line naming the workflow and its task queue, and exits 1.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Annotated

import typer
from pydantic import ValidationError

try:  # recent typer vendors click as typer._click, whose exceptions are not click's classes
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from worker.cli import connectors, debug, dev, fleets, schema, serve, server
from worker.cli.common import (
    NO_ANSWER_EXIT,
    USER_ERROR_EXIT,
    USER_ERRORS,
    UsageProblem,
    fail,
    first_validation_error,
)
from worker.control import NoAnswerError
from worker.logs import LOG_LEVEL_ENV

__all__ = ["USER_ERROR_EXIT", "UsageProblem", "app", "main"]

app = typer.Typer(
    name="molecule-connect",
    help="Attach external agents to Molecule workspaces in poll mode, durably, on Temporal.",
    no_args_is_help=True,
    # --install-completion / --show-completion for bash, zsh, fish and PowerShell (README, Commands).
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for _group in (serve, connectors, fleets, debug, dev, server, schema):
    app.add_typer(_group.app)


def _print_version(value: bool) -> None:
    if value:
        from worker.assemble import agent_version

        print(f"molecule-connect {agent_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Attach external agents to Molecule workspaces in poll mode, durably, on Temporal."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one line and exit code 2.

    As the process entry point (``argv`` None) it ends the process with ``os._exit``: the Temporal SDK's Rust
    threads can abort interpreter shutdown ("Fatal Python error: PyGILState_Release", temporalio/sdk-python#300),
    which would turn exit code 0 or 2 into a SIGABRT. Callers passing ``argv`` (tests) get ``SystemExit`` instead.
    """
    if argv is not None:
        _main(argv)
        return
    try:
        _main(None)
        code: object = 0
    except SystemExit as err:
        code = err.code
    except Exception as err:  # a bug, not a user error: one line; the traceback at DEBUG only
        if os.environ.get(LOG_LEVEL_ENV, "").upper() == "DEBUG":
            traceback.print_exc()
        reason = (str(err).splitlines() or [""])[0][:300]
        code = (
            f"molecule-connect: unexpected {type(err).__name__}: {reason} (set {LOG_LEVEL_ENV}=DEBUG for the traceback)"
        )
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _main(argv: list[str] | None) -> None:
    try:
        # Without standalone mode an Exit (e.g. after --help) is returned as its code instead of raised.
        code = app(args=argv, standalone_mode=False)
    except typer.Exit as err:
        raise SystemExit(err.exit_code) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except getattr(click_exceptions, "NoArgsIsHelpError", ()) as err:
        err.show()
        raise SystemExit(USER_ERROR_EXIT) from None
    except click_exceptions.UsageError as err:
        hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx else " (see --help)"
        fail(err.format_message().replace("\n", " ") + hint)
    except click_exceptions.ClickException as err:
        fail(err.format_message().replace("\n", " "))
    except ValidationError as err:
        fail(first_validation_error(err))
    except NoAnswerError as err:  # nothing the user typed is wrong: the connector's workers are missing or slow
        fail(str(err).splitlines()[0], code=NO_ANSWER_EXIT)
    except USER_ERRORS as err:
        fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
