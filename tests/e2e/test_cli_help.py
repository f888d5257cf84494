"""Every verb's `--help` shows its help texts verbatim (issue 16): rich markup once swallowed `[tls]` in
`sealgate revoke --help`. Each text declared in the code (command docstrings, option and argument help) must
appear, brackets included, in the rendered help: every verb in-process through the CLI's root group, and the
reported cases through the installed console script.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
import typer.main
import typer.models
import typer.utils
from typer.testing import CliRunner

from gateway.cli import BENCHES, SealgateGroup, app

SEALGATE = Path(sys.executable).with_name("sealgate")
_FRAME = re.compile(r"[│╭╮╰╯─┃━┏┓┗┛]")


def _declared_texts(command: click.Command) -> list[str]:
    """The help texts the code declares for a command: its help, each option's and each argument's."""
    texts = [command.help or ""]
    texts += [getattr(p, "help", None) or "" for p in command.params]
    if command.callback is not None:
        params = typer.utils.get_params_from_function(inspect.unwrap(command.callback))
        texts += [
            info.default.help
            for info in params.values()
            if isinstance(info.default, typer.models.ArgumentInfo) and info.default.help
        ]
    return [t for t in texts if t.strip()]


def _walk(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every (path, command) under `command`, itself included."""
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += _walk(sub, (*path, name))
    return found


def _with_fl() -> typer.Typer:
    """The CLI's root group with the real `fl` sub-app (the console script loads it only for `sealgate fl`)."""
    from fl.commands import fl_app

    root = typer.Typer(name="sealgate", cls=SealgateGroup, add_completion=False)
    root.add_typer(fl_app, name="fl")
    return root


FL_ROOT = _with_fl()
COMMANDS = [(p, c) for p, c in _walk(typer.main.get_command(app)) if not p or p[0] != "fl"]
COMMANDS += [(p, c) for p, c in _walk(typer.main.get_command(FL_ROOT)) if p]
# the walk must reach the user's verbs, the release commands and the real `fl run`, or it proves nothing
assert {"revoke", "token", "serve", "bench", "convert", "check", "release", "fl", "fl run"} <= {
    " ".join(p) for p, _ in COMMANDS
}


def _flat(text: str) -> str:
    """Text without rich's frame characters, whitespace collapsed, so wrapped lines compare as one."""
    return " ".join(_FRAME.sub(" ", text).split())


def _render(*path: str) -> str:
    """`--help` of a command rendered in-process through the CLI's own root group, wide enough to cut nothing."""
    root = FL_ROOT if path[:1] == ("fl",) else app
    result = CliRunner().invoke(root, [*path, "--help"], prog_name="sealgate", env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def _console_help(*path: str) -> str:
    """What the installed `sealgate PATH --help` prints."""
    env = {**os.environ, "COLUMNS": "250", "TERM": "dumb"}
    result = subprocess.run(
        [str(SEALGATE), *path, "--help"], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "sealgate" for p, _ in COMMANDS])
def test_every_help_text_survives_verbatim(path: tuple[str, ...], command: click.Command) -> None:
    """Each declared text appears whole in the rendered help; every `[` of it survives."""
    shown = _flat(_render(*path))
    for text in _declared_texts(command):
        first_paragraph = text.split("\n\n")[0]
        assert _flat(first_paragraph) in shown, (first_paragraph, shown)
        for bracketed in re.findall(r"\[[^\]]*\]", text):
            assert bracketed in shown, (bracketed, shown)


def test_revoke_help_names_the_config_section() -> None:
    """The case reported in issue 16: "which ` crl` enforces" must read "which `[tls] crl` enforces"."""
    shown = _flat(_console_help("revoke"))
    assert "`[tls] crl` enforces" in shown, shown
    assert "The client certificate (PEM) to revoke." in shown, shown


def test_bench_help_lists_the_benchmarks() -> None:
    """`sealgate bench --help` names every benchmark it can run."""
    shown = _flat(_console_help("bench"))
    for name in BENCHES:
        assert re.search(rf"\b{name}\b", shown), (name, shown)
    assert "one of seal, serve, optimize, privacy" in shown, shown
