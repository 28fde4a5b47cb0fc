"""One module per DVC stage: read its params, call the library (backdoorlab), write its outputs.

Run any of them with `python -m stages.<name> --help` from the folder holding dvc.yaml.
When BACKDOORLAB_WORKER names a running worker (`python -m backdoorlab.worker dvc repro`),
the stage runs there instead, with torch already imported (see backdoorlab/worker.py).
"""
import os
import sys

if os.environ.get("BACKDOORLAB_WORKER") and "-m" in getattr(sys, "orig_argv", ()):
    _at = sys.orig_argv.index("-m")
    if sys.orig_argv[_at + 1].startswith(f"{__name__}."):
        from backdoorlab.worker import delegate

        _code = delegate(sys.orig_argv[_at + 1], sys.orig_argv[_at + 2:])
        if _code is not None:
            sys.exit(_code)
