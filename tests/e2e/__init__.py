"""End to end: a real `bbsd run` (or the demo, or the built artefact) on a real folder, and what it survives."""
