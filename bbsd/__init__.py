"""bbsd: the stage-side labelling daemon of the Balanced Blended Space puppet show."""

__version__ = "0.1.0"
