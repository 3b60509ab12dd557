"""The show itself: its catalog of characters and props, its own questions, and its reference photos.

Invariant: what the producer configures is validated here into frozen values; names are compared in NFC.
"""
