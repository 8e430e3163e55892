"""Stands in for Slicer's ``PythonSlicer`` launcher in tests: it starts the real interpreter as a
child process and waits for it, so killing this process alone would leave the work running."""

import subprocess
import sys

sys.exit(subprocess.call([sys.executable, *sys.argv[1:]]))
