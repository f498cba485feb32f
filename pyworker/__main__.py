"""``python -m pyworker``."""

from ._cli import main

main()
