"""Task engine: workflows of named steps run by workers with leases, logs and cancellation."""
