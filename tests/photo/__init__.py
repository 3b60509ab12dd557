"""Decoding photos."""
