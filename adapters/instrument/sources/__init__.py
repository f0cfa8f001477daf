"""Instrument sources: the interface (``base``), the simulated lab, and QCoDeS stations (imported lazily).

Nothing is imported here, so that importing the interface never imports QCoDeS or the simulation.
"""
