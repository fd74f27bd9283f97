"""ketamine-cds: the ketamine/esketamine knowledge. Nothing here knows about HTTP."""

__version__ = "0.1.0"
