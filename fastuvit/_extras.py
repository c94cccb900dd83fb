"""Optional dependencies, imported only where they are used: ``import fastuvit`` never needs them, and
a missing one is one line naming the extra that installs it."""
from __future__ import annotations

import importlib


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str, extra: str, purpose: str):
    """``import module``, or ``MissingExtraError`` naming ``pip install "fastuvit[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the package is there but one of its own imports failed: show the real error
        raise MissingExtraError(f"{purpose} needs {top}, which is not installed: "
                                f'pip install "fastuvit[{extra}]"') from None
