"""The content-addressed cache: the key of a step, the store (lookup, stage, publish), the
layout and manifest of an entry, per-key locks, upkeep (stale staging, gc, verify), the private
copies of file parameters, hashing, durable writes and group commits (one durability barrier
for many entries), the saved-log files, process liveness and what live runs hold (against gc).

May import ``kliko_async.model`` and the shared vocabulary (``errors``, ``events``, ``results``);
never the runtime, the engine, the displays or the faces.
"""
