"""`python -m audiofind.cli`: the same as the `audiofind` command."""

from .main import main

main()
