"""Tasks: what the entry points run. Each takes the composed config and returns its results."""
