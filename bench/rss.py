"""`rss.py RECORD NAME EXECUTABLE`: run EXECUTABLE as a plugin (same stdin, stdout,
stderr, environment and exit code) and append "NAME <peak RSS in KiB>" to RECORD.

The benchmark puts one of these in front of every plugin to measure the memory of
the plugin processes themselves: the peak of this process's only child."""

import resource
import subprocess
import sys

record, name, executable = sys.argv[1:4]
code = subprocess.call([executable])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(record, "a") as fh:
    fh.write(f"{name} {peak}\n")
sys.exit(code)
