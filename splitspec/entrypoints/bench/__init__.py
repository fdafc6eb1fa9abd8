"""`splitspec bench`: side-by-side benchmarks, interleaved in one process run."""
