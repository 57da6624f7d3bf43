"""Text to vectors: models, the encoder (torch or ONNX Runtime), EmbedFilter and the
fitted baselines, and the token lens."""
