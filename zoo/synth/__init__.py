"""DESIGNER data synthesis (arXiv:2508.12726; notes §3): the pipeline's stages, its LLM and embedding backends, and
the diversity metrics of its analysis."""
