"""The checkpoint hub: the store (entries, verification, loading, cards) and Hugging Face conversion."""
