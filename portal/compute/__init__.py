"""Notebooks on the factory's GPUs, portal side: the OAuth2 server the JupyterHub logs users in with, and
the spawn check the hub asks before it starts a server (see README, "Notebooks (portal side)")."""
