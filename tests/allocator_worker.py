"""Applies ``configure_command_line`` as a command line does, then prints the allocator mapped into this process
("tcmalloc" or "glibc"), the setting it chose, its process id and its arguments."""
import json
import os
import sys

from searchr3_eval.memory import configure_command_line

chosen = configure_command_line(training=sys.argv[1:2] == ["train"])
with open("/proc/self/maps", encoding="utf-8") as maps:
    allocator = "tcmalloc" if "tcmalloc" in maps.read() else "glibc"
print(json.dumps({"allocator": allocator, "chosen": chosen, "pid": os.getpid(), "argv": sys.argv[1:]}))
