"""Untrusted bytes to pixels: decoding, RAW, the decoder process and the daemon's client of it.

Invariant: only the decoder process (`photo.worker`) and the engine worker import the decoding modules
(`photo.decode`, `photo.raw`); the daemon holds the client (`photo.decoder`) and the value types
(`photo.pixels`).
"""
