"""The Slurm runtime: one Slurm job (or array task) per step, its batch script, and the queue
it watches. Same imports as ``kliko_async.runtime``."""
