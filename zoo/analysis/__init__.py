"""What a run measures beside its loss: the loop probes and results tables."""
