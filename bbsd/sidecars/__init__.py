"""What editors read, written safely: the JSON record, the XMP sidecar and its merge with people's edits.

Invariant: a human edit always wins; a sidecar is replaced whole or not at all.
"""
