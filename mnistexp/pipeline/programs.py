"""Compiled programs kept for the later jobs of this process, keyed by shape, never by job.

A job trains on a *slot*: a Keras model (and optimizer) of its architecture that this process
keeps, with the job's own initial weights and fresh optimizer state assigned into its variables.
The training loops and evaluation passes traced and compiled on a slot are reused by every later
job of the same shapes, so seeds, learning rates and data of the same size compile nothing. The
job's own model gets the slot's state back when training ends. The programs are the ones a new
model would get (the same graph, only the variables' values differ), so results are bit-identical.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras

from mnistexp.config.schema import MnistexpConfig

# Architectures kept at once; the least recently used one (its slots and programs) goes first.
MAX_SHAPES = 8


@dataclass(eq=False)
class Slot:
    """A model this process keeps for jobs of one architecture, optimizer kind and loss."""

    key: str
    model: keras.Model

    def load(self, network: keras.Model) -> None:
        """Take `network`'s weights and optimizer state (its optimizer built, so fresh state has values)."""
        for model in (network, self.model):
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
        _assign(self.model.weights, network.weights)
        _assign(self.model.optimizer.variables, network.optimizer.variables)
        self.model.stop_training = False

    def unload(self, network: keras.Model) -> None:
        """Give `network` the weights and optimizer state trained here."""
        _assign(network.weights, self.model.weights)
        _assign(network.optimizer.variables, self.model.optimizer.variables)


def _assign(targets: Sequence[Any], sources: Sequence[Any]) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.assign(source.value)


def slot_key(cfg: MnistexpConfig, network: keras.Model) -> str:
    """What a compiled program depends on: the layers, the optimizer's class and every setting but
    its learning rate (a variable), the loss, and whether training is under XLA and op determinism."""
    optimizer = {k: v for k, v in network.optimizer.get_config().items() if k != "learning_rate"}
    return json.dumps(
        {
            "layers": network.get_config(),
            "optimizer": [type(network.optimizer).__name__, optimizer],
            "loss": cfg.trainer.loss,
            "xla": cfg.trainer.jit_compile,
            "deterministic": cfg.trainer.deterministic,
        },
        sort_keys=True,
        default=str,
    )


class Programs:
    """The slots of this process, a few per architecture, and the training programs traced on them.

    A program trains a tuple of slots together (a fused group's, or a single job's); the same tuple
    asked for again gets the same program. Bounded by MAX_SHAPES architectures, not by jobs.
    """

    def __init__(self, max_shapes: int = MAX_SHAPES) -> None:
        self.max_shapes = max_shapes
        self._slots: OrderedDict[str, list[Slot]] = OrderedDict()
        self._programs: dict[tuple[int, ...], Callable] = {}

    def slots(self, keys: Sequence[str], build: Callable[[int], keras.Model]) -> list[Slot]:
        """A distinct slot per position of `keys` (the k-th of one key takes that key's k-th slot);
        `build(position)` makes the model for a slot this process does not have yet."""
        taken: dict[str, int] = {}
        chosen = []
        for position, key in enumerate(keys):
            pool = self._slots.setdefault(key, [])
            self._slots.move_to_end(key)
            index = taken[key] = taken.get(key, -1) + 1
            if index == len(pool):
                pool.append(Slot(key, build(position)))
            chosen.append(pool[index])
        self._evict(set(keys))
        return chosen

    def program(self, slots: Sequence[Slot], make: Callable[[], Callable]) -> Callable:
        """The training program of these slots, made once."""
        key = tuple(id(slot) for slot in slots)
        if key not in self._programs:
            self._programs[key] = make()
        return self._programs[key]

    def _evict(self, in_use: set[str]) -> None:
        while len(self._slots) > self.max_shapes:
            key = next(iter(self._slots))
            if key in in_use:
                break
            gone = {id(slot) for slot in self._slots.pop(key)}
            self._programs = {k: p for k, p in self._programs.items() if not gone.intersection(k)}

    def __len__(self) -> int:
        return sum(len(pool) for pool in self._slots.values())


PROGRAMS = Programs()  # this process's: a sweep's jobs in one process share it
