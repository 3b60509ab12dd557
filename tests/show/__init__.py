"""The show's questions and reference photos."""
