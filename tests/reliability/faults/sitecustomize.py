"""Test-only fault injection for tests/reliability (never on the path of a normal run).

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has one; the
reliability tests put this folder on ``PYTHONPATH`` of a subprocess they start, and nothing else
does. It acts only when one of its variables is set. ``SOLIDER_TEST_KILL_AT_SAVE=N``: the process
SIGKILLs itself at its N-th rename of a checkpoint (``os.replace`` onto a ``*.pt`` file), i.e. after the
temporary file is fully written and synced and before it takes the checkpoint's name. That is the
moment a power cut or a pre-emption during a save leaves the most debris behind.
"""

import os

_KILL_AT = os.environ.get("SOLIDER_TEST_KILL_AT_SAVE")

if _KILL_AT:
    import signal
    import sys

    _real_replace = os.replace
    _renames = [0]

    def _replace_or_die(src, dst, *args, **kwargs):
        if str(dst).endswith(".pt"):
            _renames[0] += 1
            if _renames[0] == int(_KILL_AT):
                print(f"fault injection: SIGKILL before renaming {src} -> {dst}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        return _real_replace(src, dst, *args, **kwargs)

    os.replace = _replace_or_die

# SOLIDER_TEST_HIDE_ON_RANK1=name,name,...: the process of rank 1 (RANK=1, set by the launcher) does
# not see these file names in any folder listing (os.scandir, which the dataset readers use): a node
# whose copy of the data is incomplete.
_HIDE = os.environ.get("SOLIDER_TEST_HIDE_ON_RANK1")

if _HIDE and os.environ.get("RANK") == "1":
    _hidden = set(_HIDE.split(","))
    _real_scandir = os.scandir

    class _Listing:
        def __init__(self, inner):
            self._inner = inner

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._inner.close()

        def __iter__(self):
            return (e for e in self._inner if e.name not in _hidden)

        def close(self):
            self._inner.close()

    os.scandir = lambda path=".": _Listing(_real_scandir(path))
