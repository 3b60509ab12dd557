"""The model registry, downloads, fit and conversion."""
