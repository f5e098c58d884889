"""The language model and its residual stream: loading (tiny, GGUF, hub), capture and patch hooks, decoder families."""
