"""``python -m contrahash.cli …``: the same as the ``contrahash`` command."""

from contrahash.cli import main

main()
