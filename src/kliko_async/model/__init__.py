"""What a chain is, before anything runs: the kliko.yml spec of an image, the chain file and its
checked model, matrix expansion, the DAG, quantities (sizes, ages) and the YAML text helpers.

Pure and synchronous: no I/O but reading the files it is given. May import only the shared
vocabulary (``kliko_async.errors``, ``events``, ``results``) and ``kliko_async.model`` itself.
"""
