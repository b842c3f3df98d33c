"""Run the `chatd` command as `python -m chatd`."""

from chatd.cli import main

main()
