"""recpar: benchmark suite for distributed training of LLM-based recommenders (arXiv:2506.17551)."""

__version__ = "0.1.0"
