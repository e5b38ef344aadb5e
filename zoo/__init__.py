"""zoo: a PyTorch Lightning model zoo for LLM research."""

__version__ = "0.1.0"
