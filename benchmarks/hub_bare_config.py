"""The notebook benchmark's "bare" hub: hub_config/jupyterhub_config.py unchanged, except that spawns are not
checked by the portal. The environment the portal's check would set for the ``cpu`` profile is fixed here, so
the servers are the same. For benchmarks only: a hub without the portal's check lets anyone start anything.
"""

from pathlib import Path

c = get_config()  # noqa: F821
load_subconfig(str(Path(__file__).resolve().parent.parent / "hub_config" / "jupyterhub_config.py"))  # noqa: F821

c.Spawner.apply_user_options = None
c.Spawner.environment.update({"CUDA_VISIBLE_DEVICES": "", "PORTAL_PROFILE": "cpu"})
