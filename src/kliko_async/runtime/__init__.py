"""Where containers run, behind one protocol (``runtime.base.Runtime``): the Docker Engine
(``docker``; it, ``dockerlogs``, ``dockerfiles``, ``dockerowners`` and ``dockerexport`` are the
only modules that import aiodocker), Slurm (``slurm/``: one job or array task per step) and a
fake runtime for the scheduler's unit tests and benchmark. ``inflight`` records what this
process has under way outside itself.

May import ``kliko_async.cache`` (durable writes), ``kliko_async.model`` and the shared
vocabulary; knows nothing of chains, plans or the scheduler.
"""
