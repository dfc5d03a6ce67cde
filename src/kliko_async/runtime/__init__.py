"""Where containers run, behind one protocol (``runtime.base.Runtime``): the Docker Engine
(``docker`` and the modules named ``docker*``, the only ones that import aiodocker), Slurm
(``slurm/``: one job or array task per step) and a fake runtime for the scheduler's unit tests
and benchmark. ``inflight`` records what this process has under way outside itself.
``buildcontext`` and ``dockerignore`` make a ``build:`` folder's context as ``docker build``
does (``.dockerignore`` honoured, the tar streamed); the engine's build digest uses the same
list of files.

May import ``kliko_async.cache`` (durable writes), ``kliko_async.model`` and the shared
vocabulary; knows nothing of chains, plans or the scheduler.
"""
