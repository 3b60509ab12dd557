"""Which model, and where from: the registry, the hardware-fit estimate, downloads, conversion and tiny test
models.

Invariant: no model is loaded here; files are described, fetched, converted or written.
"""
