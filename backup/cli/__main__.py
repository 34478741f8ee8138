"""``python -m backup.cli``, as ``python -m backup``."""

from . import main

main()
