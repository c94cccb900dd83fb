"""Packaging glue that pyproject.toml cannot express: the top-level ``kernels/`` folder is installed
as the subpackage ``fastuvit.kernels`` (a top-level ``kernels`` package would clash with an
unrelated one on PyPI)."""
from setuptools import setup

setup(
    packages=["fastuvit", "fastuvit.ops", "fastuvit.kernels"],
    package_dir={"fastuvit": "fastuvit", "fastuvit.kernels": "kernels"},
)
