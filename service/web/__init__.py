"""The HTTP face of the service: the Flask app, probes, metrics, preview, admin endpoints."""
