"""Krait's benchmarks: Krait beside a plain grpcio baseline, measured in one run on one machine."""
