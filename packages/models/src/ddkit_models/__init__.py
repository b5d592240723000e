"""ddkit_models (filled in by its package work)."""
