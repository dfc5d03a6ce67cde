"""``python -m kliko_async`` is the ``kliko-async`` command."""

from kliko_async.cli import main

main()
