"""Load and throughput measurements of AcME Orders (run by hand, never in CI)."""
