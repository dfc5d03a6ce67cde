"""``python benchmarks/peak.py FILE COMMAND...``: run COMMAND, write its peak memory (KiB) to FILE.

A launcher of its own, so that the figure is the command's: Linux keeps a process's memory
high-water mark (``ru_maxrss``) across fork and exec, so a command started straight from a big
process (pytest, the benchmark suite) would report that process's peak. Exits as COMMAND did.
Used by ``benchmarks/bigchain.py`` and by the tests' ``KlikoCli.measured``.
"""

import os
import sys

if __name__ == "__main__":
    pid = os.fork()
    if pid == 0:
        os.execv(sys.argv[2], sys.argv[2:])
    _, status, usage = os.wait4(pid, 0)
    with open(sys.argv[1], "w") as peak:
        peak.write(str(usage.ru_maxrss))
    sys.exit(os.waitstatus_to_exitcode(status))
