"""Benchmark suites. A package so that pytest puts the repository root, not this folder, on
sys.path: this folder holds profile.py, which would otherwise shadow the standard library's."""
