"""Numeric kernels of the audio adapter, one concern per module, each formula next to its code.

- :mod:`.levels`: dBFS conversions, IEC 61672 exponential time weighting (Fast/Slow), interval maxima, peak hold.
- :mod:`.weighting`: IEC 61672 A/C/Z frequency weightings (analytic curves; digital filters fitted to them).
- :mod:`.spectrum`: windows, the FFT amplitude spectrum in dBFS, window-kernel peak interpolation, framing,
  exponential averaging and peak markers, log-bin reduction.
- :mod:`.octave`: IEC 61260 fractional-octave centre frequencies, band edges and a multirate class 1 filter bank.
- :mod:`.yin`: the YIN fundamental-frequency estimator (de Cheveigné & Kawahara, 2002), noise-robust dip choice.
- :mod:`.notes`: frequency to note name (A4 = 440 Hz) and cents.
- :mod:`.generators`: test signals (sine, white noise, exponential sweep) generated block by block.

Conventions: samples are floats with full scale at ±1.0; dBFS is ``20·log10(rms)``, so a full-scale sine reads
-3.01 dBFS RMS and 0 dBFS peak. Levels below :data:`levels.DB_FLOOR` are clamped to it (JSON has no -inf).
"""
