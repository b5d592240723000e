"""ddkit_guidance (filled in by its package work)."""
