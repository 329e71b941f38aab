"""Build: pure Python for now; the csrc/ extension is added by the kernels work."""
from setuptools import setup

setup()
