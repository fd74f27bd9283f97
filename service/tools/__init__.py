"""Developer and operator tooling: the ``ketamine-cds`` CLI, the converter, fixture loading."""
