"""The engine: the real llama.cpp on tiny models, the grammar, the reply, confidence, both backends."""
