import subprocess
import sys

import pytest

from jasmine.cli import COMMANDS


def jasmine(*args):
    return subprocess.run([sys.executable, "-m", "jasmine.cli", *args], capture_output=True, text=True)


def test_top_level_help_lists_every_command():
    out = jasmine("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert f"jasmine {name} " in out.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_has_help(name):
    out = jasmine(*name.split(), "--help")
    assert out.returncode == 0 and "usage: jasmine" in out.stdout


def test_unknown_command_and_data_errors_are_clear(tmp_path):
    out = jasmine("data", "nope")
    assert out.returncode != 0 and "unknown command 'data nope'" in out.stderr
    out = jasmine("data", "inspect", str(tmp_path / "missing"))
    assert out.returncode != 0 and "missing does not exist" in out.stderr and "Traceback" not in out.stderr
