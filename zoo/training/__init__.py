"""What training runs with: optimizers, distributed strategies, LoRA and quantized frozen models."""
