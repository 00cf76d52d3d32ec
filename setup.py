"""Build hook for the optional native relay fast path (everything else is in pyproject.toml).

The extension is compiled with the machine's C compiler on Linux. ``optional=True``: if it does
not compile (no compiler, no Python headers, another OS), the package installs without it and the
relay runs on its pure-Python path.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(
        Extension(
            "iceward.net._fastpath",
            ["src/iceward/net/_fastpath.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
