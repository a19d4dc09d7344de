"""``python -m cli``: the ``spartan`` command."""

from cli.main import main

main()
