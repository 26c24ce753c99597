"""main.py's plumbing: flags, checks before a run, quiet logs."""
