"""ddkit_samplers (filled in by its package work)."""
