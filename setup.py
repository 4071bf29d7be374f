"""The compiled part of the build; everything else is in pyproject.toml.

``alb_pcap.wire._fastwire`` (C, no dependency beyond Python's headers) speeds up the capture
stage. It is optional: where it cannot be built, capture.py does the same work in Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "alb_pcap.wire._fastwire",
            sources=["alb_pcap/wire/_fastwire.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,  # no compiler: install anyway, the pure-Python path does the work
        )
    ],
)
