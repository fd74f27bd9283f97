"""CDS Hooks 2.0 protocol layer: discovery, request validation, prefetch, response model.

Nothing in this package knows about any particular clinical domain; a service plugs in a
:class:`~cds_hooks.service.ServiceDefinition` whose handler turns a resolved request into cards.
"""
