"""A child module for tests/integration/test_children.py: reports what its process sees, as
JSON in the file named by its first argument, then exits with the code read from stdin.

argv: RESULT_PATH [FD]: with FD, it writes "reply" to that descriptor too."""

from __future__ import annotations

import json
import os
import sys


def _main() -> int:
    from shipyard.exporter import zygote  # noqa: F401  (imported already when forked)

    line = sys.stdin.readline()
    print("probe's stdout")
    print("probe's stderr", file=sys.stderr)
    facts = {
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "environment": {name: os.environ.get(name) for name in
                        ("CUDA_VISIBLE_DEVICES", "SHIPYARD_PROBE")},
        "keras_imported": "keras" in sys.modules,
        "tensorflow_imported": "tensorflow" in sys.modules,
        "threads_started_by_import": zygote.THREADS_STARTED_BY_IMPORT,
        "stdin": line,
    }
    from shipyard.exporter.children import import_tensorflow_as_fresh

    import_tensorflow_as_fresh()  # the reference's import
    facts["keras_optimizers_registered"] = "keras.src.optimizers" in sys.modules
    if len(sys.argv) > 2:
        with os.fdopen(int(sys.argv[2]), "w") as reply:
            reply.write("reply\n")
    with open(sys.argv[1], "w") as result:
        json.dump(facts, result)
    return int(line.split()[-1]) if line.strip() else 0


if __name__ == "__main__":
    sys.exit(_main())
