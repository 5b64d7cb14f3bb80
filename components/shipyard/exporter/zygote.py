"""What the fork server of children.ForkedStarter imports before it forks anything:
TensorFlow, the verifier's way (without Keras), and nothing else.

It also records the threads that import started. A fork copies only the forking thread, so a
child of a process with a live TensorFlow thread pool could wait forever on a lock or a queue
that no thread serves. Importing TensorFlow runs no op and starts no pool; numpy's OpenBLAS
pool (started by `import numpy`, before) shuts itself down around a fork. Should a future
TensorFlow start threads at import, children refuse to run (children._run_module) rather than
risk that.
"""

from __future__ import annotations

import os

import numpy  # noqa: F401  (its OpenBLAS pool starts here, before the count)

from shipyard.exporter.children import import_tensorflow_without_keras


def _threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


_before = _threads()
import_tensorflow_without_keras()
THREADS_STARTED_BY_IMPORT = sorted(_threads() - _before)
