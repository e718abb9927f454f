"""Applies ``configure_command_line`` as a command line does, then prints the allocator mapped into this process
("tcmalloc" or "glibc"), its process id and its arguments."""
import json
import os
import sys

from searchr3_eval.memory import configure_command_line

configure_command_line()
with open("/proc/self/maps", encoding="utf-8") as maps:
    allocator = "tcmalloc" if "tcmalloc" in maps.read() else "glibc"
print(json.dumps({"allocator": allocator, "pid": os.getpid(), "argv": sys.argv[1:]}))
