"""An instrument adapter whose worker builds its own QCoDeS default station, and tools that change it while
monitors run: how a lab's own code adds instruments and parameters after a monitor started (the tests of
late instruments load this adapter into a real worker)."""

from __future__ import annotations

from adapters.instrument import InstrumentAdapter
from adapters.instrument.sources.qcodes_source import IO_LOCK
from python_worker import tool


class LabAdapter(InstrumentAdapter):
    def setup(self) -> None:
        import qcodes
        from qcodes.instrument_drivers.mock_instruments import DummyInstrument

        self.station = qcodes.Station()  # the process's default station
        self.station.add_component(DummyInstrument("dac", gates=["ch1"]))
        super().setup()

    @tool
    def add_instrument(self, name: str, gates: list[str]) -> list[str]:
        """Create a DummyInstrument and add it to the default station; returns its parameters."""
        from qcodes.instrument_drivers.mock_instruments import DummyInstrument

        with IO_LOCK:
            instrument = DummyInstrument(name, gates=gates)
            self.station.add_component(instrument)
        return list(instrument.parameters)

    @tool
    def add_parameter(self, instrument: str, name: str, value: float) -> None:
        """Add a settable parameter (unit V) to an instrument of the default station."""
        with IO_LOCK:
            self.station.components[instrument].add_parameter(
                name, set_cmd=None, initial_value=value, unit="V", label=name
            )

    @tool
    def remove_instrument(self, name: str) -> None:
        """Take an instrument out of the default station and close it."""
        with IO_LOCK:
            self.station.remove_component(name).close()

    def close(self) -> None:
        self.station.close_all_registered_instruments()
        super().close()
