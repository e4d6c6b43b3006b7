"""controlplane: a PostgreSQL control plane driven by declarative JSON specs."""

__version__ = "0.1.0"
