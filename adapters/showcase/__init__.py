"""The showcase adapter: the streaming and unary examples users expect, and the edge cases tests drive."""

from .adapter import ShowcaseAdapter

__all__ = ["ShowcaseAdapter"]
