"""The JSON and XMP sidecars, read back by independent tools."""
