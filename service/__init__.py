"""ketamine-cds: CDS Hooks decision support for ketamine and esketamine orders.

Three layers, one direction of dependency (tools → web → engine → cds_hooks); the registry
sits beside web:

* :mod:`service.engine` — the knowledge, pure: no Flask, no requests, no SQL, no clock reads;
* :mod:`service.web` — the Flask app, probes, metrics, preview, the registry's admin endpoint;
* :mod:`service.tools` — the ``ketamine-cds`` CLI, the FHIR-to-request converter, fixtures;
* :mod:`service.registry` — storage of evaluations and feedback (SQLite or PostgreSQL).
"""

__version__ = "0.1.0"
