"""Text: the local BPE tokenizer, the embedded corpus, chat templates and the resumable batch loader."""
