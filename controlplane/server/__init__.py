"""The `serve` process: its composition root (runtime), the monitor, metrics."""
