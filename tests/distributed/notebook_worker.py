"""The Python API under ``accelerate.notebook_launcher`` with 2 processes: meta_worker's run, as from a notebook.

Usage: notebook_worker.py OUT_DIR ALGORITHM [meta_worker options]
"""

import sys

from accelerate import notebook_launcher

from tests.distributed.meta_worker import main

if __name__ == "__main__":
    notebook_launcher(main, args=(sys.argv[1:],), num_processes=2, use_port="29533")
