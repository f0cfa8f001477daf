"""The dashboard demo adapter: the showcase, ML, audio and instrument tools in one worker, for the live page."""

from .adapter import DashboardAdapter

__all__ = ["DashboardAdapter"]
