"""The garbage collector as a preloaded, forking server wants it (issue 15).

The master loads the app (policy, value sets, ``fhir.resources`` models: ~160,000 objects)
before it forks the workers. :func:`settle` runs there once the app is loaded, :func:`freeze`
right before each fork (``service.web.gunicorn_conf``); ``bench/inprocess.py`` applies the
same, so its figures are the workers'.

- Frozen, the preloaded objects sit in a permanent generation that no collection traverses:
  for M the full collections had cost 0.77 ms per request (22% of it), 0.004 ms after; the
  collector no longer writes to those pages either, so they stay shared with the master.
- The youngest generation is collected after :data:`YOUNG_THRESHOLD` net allocations instead
  of 700. A hook call's objects (the parsed body, the record, the models) live as long as the
  request, so a collection during it only finds them alive and promotes them, to be
  traversed again by the older generations. GC per L request, alone: 0.42 ms at 700; four at
  once (the four threads of a gthread worker): 1.1 ms at 700, 0.38 ms at 10,000, none at
  50,000. Cyclic garbage (rare here) waits until that many objects more are alive: a few MB.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def settle() -> None:
    """Once the app is loaded: collect what start-up left, then set the young threshold."""
    gc.collect()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def freeze() -> None:
    """Everything alive now moves to the permanent generation (before each fork)."""
    gc.freeze()
