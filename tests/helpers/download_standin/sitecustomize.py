"""A stand-in for `keras.datasets.<name>.load_data()`'s download, for a test process started with this
folder on PYTHONPATH: the machines that run the tests are offline. The module loads as usual; its
load_data then returns the arrays of MNISTEXP_TEST_DOWNLOAD (an .npz) and notes the call in
MNISTEXP_TEST_DOWNLOAD_LOG."""

import importlib.abc
import importlib.util
import os
import sys

STOOD_IN = ("keras.datasets.mnist", "keras.datasets.fashion_mnist")


class _StandIn(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in STOOD_IN:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.load_data = lambda *args, **kwargs: _arrays(name)

        spec.loader.exec_module = exec_module
        return spec


def _arrays(name):
    import numpy as np

    with open(os.environ["MNISTEXP_TEST_DOWNLOAD_LOG"], "a") as log:
        log.write(f"{name}\n")
    with np.load(os.environ["MNISTEXP_TEST_DOWNLOAD"]) as data:
        return (data["x_train"], data["y_train"]), (data["x_test"], data["y_test"])


sys.meta_path.insert(0, _StandIn())
