"""The model study: truth, eval, dataset export."""
