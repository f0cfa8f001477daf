"""Live audio analysis (levels, spectrum, octave bands, pitch, scope) from a device, a WAV file or a test signal."""

from .adapter import AudioAdapter

__all__ = ["AudioAdapter"]
