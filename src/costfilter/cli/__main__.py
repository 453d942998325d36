"""``python -m costfilter.cli``."""

from . import main

main()
