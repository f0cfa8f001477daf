"""Krait's bundled adapters: showcase, ml, dataset, audio, instrument. Load one as ``adapters.NAME:Class``."""
