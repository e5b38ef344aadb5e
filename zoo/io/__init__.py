"""Files and checkpoints on disk: atomic writes, bad-input handling, JSONL, checkpoint IO, rebuilt state."""
