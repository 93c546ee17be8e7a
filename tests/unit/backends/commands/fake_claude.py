"""A fake ``claude`` for the claude-code backend tests: real Claude Code's options, session rules and error outputs.

It accepts exactly the options the real CLI's ``--help`` lists (``fixtures/claude_code_help.txt``, parsed like
commander does: ``<value>`` required, ``[value]`` optional, ``<values...>`` variadic) and prints the real CLI's
outputs for its failures, word for word and on the same stream (``fixtures/claude_code_cli.json``). Like Claude
Code it keeps one transcript per session id: ``--session-id`` of an id with a transcript is refused ("already in
use"), ``--resume`` of an id without one, or with an empty one, finds "No conversation found"; the session is
recorded before the login is checked, as the real CLI does.

State lives in one directory, given by the launcher script that :func:`install` writes (the backend passes the
fake no test variables: its environment is an allowlist):

- ``calls.jsonl``: one line per run: ``argv``, ``stdin``, the whole ``env``, ``cwd``;
- ``sessions/<id>``: the transcripts (one line per turn);
- ``account``: absent or ``ok`` → answers; ``logged_out``, ``invalid_api_key`` or ``no_credit`` → that failure.

A model named ``nosuch...`` is unknown. Stdin ``hang`` starts a ``sleep`` child and hangs (pids in
``claude.pid`` of its cwd), ``fail`` fails with an API error on stderr, ``crash`` exits 1 printing only to stdout,
``leak`` fails quoting ``ANTHROPIC_API_KEY`` on stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
OUTPUTS: dict[str, dict[str, Any]] = json.loads((FIXTURES / "claude_code_cli.json").read_text())["outputs"]
HELP_TEXT = (FIXTURES / "claude_code_help.txt").read_text()

_OPTION_LINE = re.compile(r"^\s{2}(-\S.*?)(?:\s{2,}|$)")


def known_options(help_text: str = HELP_TEXT) -> dict[str, str]:
    """The options of a ``claude --help`` text: each flag to its value syntax (``""``, ``<x>``, ``[x]``, ``<x...>``).

    Reads the ``Options:`` section only (not commands): lines like ``  -r, --resume [value]   Resume ...``.
    """
    options: dict[str, str] = {}
    section = help_text.split("\nOptions:\n", 1)[1].split("\nCommands:\n", 1)[0]
    for line in section.splitlines():
        match = _OPTION_LINE.match(line)
        if match is None:
            continue
        usage = match.group(1).strip()
        flags_part, _, value = usage.partition(" <") if " <" in usage else usage.partition(" [")
        if value:
            value = ("<" if " <" in usage else "[") + value
        for flag in flags_part.split(","):
            flag = flag.strip()
            if flag.startswith("-"):
                options[flag] = value
    return options


def _emit(name: str, **values: str) -> int:
    """Print a fixture output on its streams and return its exit status."""
    output = OUTPUTS[name]
    sys.stdout.write(str(output["stdout"]).format(**values))
    sys.stderr.write(str(output["stderr"]).format(**values))
    return int(output["exit"])


def _parse(args: list[str]) -> tuple[dict[str, list[str]], int | None]:
    """Parse ``args`` as commander would with the real options; a failure is printed, its status returned."""
    options = known_options()
    seen: dict[str, list[str]] = {}
    position = 0
    while position < len(args):
        arg = args[position]
        position += 1
        if not arg.startswith("-"):
            continue  # the prompt
        flag, _, inline = arg.partition("=")
        if flag not in options:
            return seen, _emit("unknown_option", option=flag)
        syntax = options[flag]
        values = [inline] if inline else []
        if syntax.startswith("<") and not inline:
            if position >= len(args) or args[position].startswith("-"):
                return seen, _emit("missing_option_value", usage=f"{flag} {syntax}")
            values.append(args[position])
            position += 1
        if (syntax.startswith("[") and not inline) or syntax.endswith("...>"):
            while position < len(args) and not args[position].startswith("-"):
                values.append(args[position])
                position += 1
                if not syntax.endswith("...>"):
                    break
        seen[flag] = values
    return seen, None


def main(args: list[str], state_dir: str) -> int:
    """Run like ``claude``; ``state_dir`` holds the log, the transcripts and the account state."""
    state = Path(state_dir)
    stdin = sys.stdin.read()
    with (state / "calls.jsonl").open("a") as log:
        log.write(json.dumps({"argv": args, "stdin": stdin, "env": dict(os.environ), "cwd": os.getcwd()}) + "\n")
    seen, failed = _parse(args)
    if failed is not None:
        return failed
    sessions = state / "sessions"
    turn = 1
    if "--session-id" in seen:
        session = seen["--session-id"][0]
        transcript = sessions / session
        if transcript.exists():
            return _emit("session_in_use", session=session)
        transcript.write_text(stdin + "\n")
    elif "--resume" in seen or "-r" in seen:
        session = (seen.get("--resume") or seen["-r"])[0]
        transcript = sessions / session
        if not transcript.exists() or not transcript.read_text():
            return _emit("session_not_found", session=session)
        with transcript.open("a") as lines:
            lines.write(stdin + "\n")
        turn = len(transcript.read_text().splitlines())
    account = (state / "account").read_text().strip() if (state / "account").exists() else "ok"
    if account == "logged_out":
        return _emit("not_logged_in")
    if account == "invalid_api_key":
        return _emit("invalid_api_key")
    if account == "no_credit":
        return _emit("credit_balance_too_low")
    model = (seen.get("--model") or [""])[0]
    if model.startswith("nosuch"):
        return _emit("unknown_model", model=model)
    if stdin == "hang":
        child = subprocess.Popen(["sleep", "30"])
        Path("claude.pid.tmp").write_text(f"{os.getpid()} {child.pid}")
        os.rename("claude.pid.tmp", "claude.pid")
        time.sleep(30)
    if stdin == "fail":
        sys.stderr.write("API Error: 529 overloaded")
        return 1
    if stdin == "leak":
        sys.stderr.write(f"request failed with key {os.environ.get('ANTHROPIC_API_KEY')}")
        return 1
    if stdin == "crash":
        sys.stdout.write("partial answer\nsomething went wrong\n")
        return 1
    print(f"turn {turn}: {stdin}")
    return 0


LAUNCHER = """\
#!{python}
import sys
sys.path.insert(0, {root!r})
from tests.unit.backends.commands.fake_claude import main
sys.exit(main(sys.argv[1:], {state!r}))
"""


def install(directory: Path) -> Path:
    """Write an executable ``claude`` launcher into ``directory/bin`` with its state in ``directory/claude-state``.

    Returns:
        The launcher's path.
    """
    state = directory / "claude-state"
    (state / "sessions").mkdir(parents=True)
    program = directory / "bin" / "claude"
    program.parent.mkdir()
    root = str(Path(__file__).resolve().parents[4])
    program.write_text(LAUNCHER.format(python=sys.executable, root=root, state=str(state)))
    program.chmod(0o755)
    return program
