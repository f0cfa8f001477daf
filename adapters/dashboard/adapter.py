"""DashboardAdapter: one worker serving the showcase, ML, audio and instrument adapters' tools together, so one
live page (``GET /`` of ``serve --http-port``) can run a progress stream, a training run, a spectrum of a
generated signal and an instrument monitor side by side.

``BaseAdapter.tool_specs`` walks the MRO, so inheriting the four adapters serves every one of their tools (their
tool names do not overlap: ``test_dashboard_adapter`` checks it). Their ``__init__``, ``setup`` and ``close`` call
``super()``, so each runs once, in MRO order; their private attributes have distinct names.
"""

from __future__ import annotations

from ..audio import AudioAdapter
from ..instrument import InstrumentAdapter
from ..ml import MLAdapter
from ..showcase import ShowcaseAdapter


class DashboardAdapter(ShowcaseAdapter, MLAdapter, AudioAdapter, InstrumentAdapter):
    """Every tool of the showcase, ML, audio and instrument adapters."""
