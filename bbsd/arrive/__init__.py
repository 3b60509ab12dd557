"""What comes in, and when it is ready: watching, settling, scanning, filtering, queueing, RAW+JPEG pairs.

Invariant: nothing here reads a photo's bytes; it decides from names, sizes and times which files are photos
to label and when.
"""
