"""The model: the `Labeler` protocol and its value types, the prompt and reply format, and the backends behind
it.

Invariant: the engine knows nothing of sidecars or the service; backends are found in `engine.registry`.
"""
