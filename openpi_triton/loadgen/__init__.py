"""The engine of `openpi-triton bench`: a fleet of simulated robots on a schedule against any OpenPI
websocket server (fleet), its channel (websocket), the sweep over fleet sizes with its results (sweep,
stats, plots, machine)."""
