"""The command line: every command has --help, unknown commands and bad inputs are clear errors."""

import subprocess
import sys

import pytest
from conftest import cli

from jasmine.cli import COMMANDS


def test_top_level_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "jasmine", "--help"], capture_output=True, text=True)  # the entry point
    assert out.returncode == 0
    for name in COMMANDS:
        assert f"jasmine {name} " in out.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_has_help(name):
    out = cli(*name.split(), "--help")
    assert out.returncode == 0 and "usage: jasmine" in out.stdout


def test_unknown_command_and_data_errors_are_clear(tmp_path):
    out = cli("data", "nope")
    assert out.returncode != 0 and "unknown command 'data nope'" in out.stderr
    out = cli("data", "inspect", tmp_path / "missing")
    assert out.returncode != 0 and "missing does not exist" in out.stderr
