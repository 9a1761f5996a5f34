"""Runtimes that run a whole cluster (local processes today) and the settings table."""
