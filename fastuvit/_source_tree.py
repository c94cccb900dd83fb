"""``fastuvit.kernels`` when fastuvit is imported straight from a source checkout.

The kernels live in the top-level ``kernels/`` folder, which ``setup.py`` installs as the subpackage
``fastuvit.kernels``. An installed copy, or a PEP 660 editable install, carries that mapping; an import
from the checkout itself does not: ``python -m pytest`` at the root (the working directory comes first
on ``sys.path``, ahead of any installed copy), ``PYTHONPATH=.``, or a legacy ``setup.py develop``
install (what pip falls back to with an old setuptools and ``--no-build-isolation``, as on the GPU
image). There ``fastuvit.kernels`` would not exist; this finder maps it to the checkout's ``kernels/``.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT_KERNELS = os.path.join(os.path.dirname(_PACKAGE_DIR), "kernels")


class _CheckoutKernelsFinder(importlib.abc.MetaPathFinder):
    """Finds ``fastuvit.kernels`` (the package; its modules then resolve through its ``__path__``)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "fastuvit.kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(_CHECKOUT_KERNELS, "__init__.py"),
            submodule_search_locations=[_CHECKOUT_KERNELS])


def map_checkout_kernels() -> None:
    """Install the finder when fastuvit is a checkout's folder (``kernels/`` and ``setup.py`` beside
    it, no ``fastuvit/kernels``). First on ``sys.meta_path``, so the kernels always come from the
    same tree as the fastuvit that imports them (an editable install of another checkout would
    otherwise supply its own)."""
    checkout = os.path.dirname(_PACKAGE_DIR)
    if (os.path.isdir(os.path.join(_PACKAGE_DIR, "kernels"))
            or not os.path.isfile(os.path.join(_CHECKOUT_KERNELS, "__init__.py"))
            or not os.path.isfile(os.path.join(checkout, "setup.py"))):
        return
    if not any(isinstance(finder, _CheckoutKernelsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutKernelsFinder())
