"""Consumers of run events: a rich live view, plain prefixed lines, JSON lines; and the
printed views of a plan (dry run, graph) and of the cache (tables).

Consume events and plans; never drive a run. May import ``kliko_async.engine``,
``kliko_async.runtime``, ``kliko_async.cache``, ``kliko_async.model`` and the vocabulary.
"""
