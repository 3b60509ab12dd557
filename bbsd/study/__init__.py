"""The model study: ground truth, `bbsd eval` and its reports. Depends on the pipeline, never the reverse."""
