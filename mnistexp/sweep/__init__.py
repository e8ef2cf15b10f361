"""A multirun's machinery: the Hydra callback (parent run), hand-off, summary, replicates, Optuna, launchers.

The package is also the Python API's `mnistexp.sweep(...)`: `mnistexp.sweep` names this package once
any of its modules is imported (Python binds a subpackage to its parent's attribute), so the package
itself is callable and calls `mnistexp.api.sweep`.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from mnistexp.api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
