"""Step helpers shared by several task types (converging a spec, child tasks)."""
