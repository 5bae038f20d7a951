"""``python -m cnncli``: the command-line tool."""

from cnncli.cli import run

run()
