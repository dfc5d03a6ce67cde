"""Running a chain: plan (keys, cache hits, readiness), the scheduler (ready steps under job
slots, resources and key locks), one attempt of a step, saved step logs, the event bus, images
and their kliko.yml, the container job of a step (workspace), exports, explain, signals,
leftovers of killed runs, and ``run-image`` (one image, no cache).

May import ``kliko_async.runtime`` (through its ``Runtime`` protocol; never aiodocker itself),
``kliko_async.cache``, ``kliko_async.model`` and the shared vocabulary; never the displays or
the faces (``api``, ``cli``, ``luigi``).
"""
