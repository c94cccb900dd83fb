"""Packaging: ``fastuvit.kernels`` resolves to the checkout's ``kernels/`` folder however fastuvit is
imported from a checkout. On the GPU image pip fell back to a legacy ``setup.py develop`` install
(old setuptools, ``--no-build-isolation``), which has no mapping for the subpackage, and every kernel
test failed with ``No module named 'fastuvit.kernels'``."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_kernels_without_install_mapping(cwd):
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "import fastuvit, fastuvit.kernels._common as c; print(fastuvit.__file__); print(c.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_kernels_resolve_in_a_checkout_without_the_install_mapping():
    package, kernels = _import_kernels_without_install_mapping(ROOT)
    assert package == os.path.join(ROOT, "fastuvit", "__init__.py")
    assert kernels == os.path.join(ROOT, "kernels", "_common.py")
