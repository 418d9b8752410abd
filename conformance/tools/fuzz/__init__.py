"""Fuzzing campaigns: structure-aware mutations of a real seed stream against a real QEMU
destination and/or the reference loader; findings deduplicated by signature, shrunk by
hypothesis and saved so that they can be replayed."""
