"""Built-in model backends and embedders: llama.cpp in-process, OpenAI-compatible servers."""
