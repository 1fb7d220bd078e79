"""``python -m portal_standin.devstripe --port P --data-dir D``: see :mod:`portal_standin.devstripe.server`."""

from portal_standin.devstripe.server import main

main()
