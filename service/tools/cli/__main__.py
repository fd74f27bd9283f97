"""``python -m service.tools.cli``, the same as the ``ketamine-cds`` script."""

from . import main

main()
