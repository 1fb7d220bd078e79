"""Development stand-ins of the portal's outside services, and ``portal demo``, which runs them.

Not part of the portal: a separate distribution (``baltic-ai-factory-portal-standin``, the portal's ``standin``
extra) that production installs leave out. It holds local processes standing in for Stripe (:mod:`.devstripe`,
localstripe extended with Checkout, GPL-3.0-or-later like localstripe), the OIDC providers (:mod:`.devstack`),
JupyterHub (:mod:`.devhub`) and a Slurm cluster with accounting (:mod:`.devstack_slurm`), and ``portal demo``
(:mod:`.demo`), registered with the ``portal`` command by the ``portal.cli_plugins`` entry point of :mod:`.cli`.
"""
