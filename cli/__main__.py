"""``python -m cli``: the ``spartan`` command."""

from cli import main

main()
