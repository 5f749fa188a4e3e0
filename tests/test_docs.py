"""Every command has help, and the README tells users about it."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from debcache.cli import cli

README = (Path(__file__).parent.parent / "README.md").read_text()


def commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += commands(command, f"{prefix}{name} ")
    return found


@pytest.mark.parametrize(("name", "command"), commands(cli), ids=lambda v: str(v))
def test_every_command_has_help_and_is_in_the_readme(name: str, command: click.Command) -> None:
    assert command.help, f"debcache {name} has no help text"
    result = CliRunner().invoke(cli, [*name.split(), "--help"], prog_name="debcache")
    assert result.exit_code == 0 and "Usage: debcache" in result.output
    assert f"debcache {name}" in README, f"README does not mention `debcache {name}`"


def test_the_options_of_every_command_and_their_variables_are_in_the_readme() -> None:
    for option in cli.params:
        names = [*option.opts, *([f"${option.envvar}"] if option.envvar else [])]
        missing = [name for name in names if name not in README]
        assert not missing, f"README does not mention {missing}"
