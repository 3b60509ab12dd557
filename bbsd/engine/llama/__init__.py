"""The `llama` backend: a GGUF model and its mmproj run in-process by llama.cpp through llama-cpp-python.

Invariant: llama_cpp is reached through `bbsd.llama_binding` only (it pins libstdc++ first).
"""
