"""``python -m portal.devstripe --port P --data-dir D``: see :mod:`portal.devstripe.server`."""

from portal.devstripe.server import main

main()
