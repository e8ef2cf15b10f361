"""The benchmark's peers: the notebook's `model.fit`, PyTorch and JAX, each in the strongest form we found.

Each trains the seed models (784 -> [hidden, relu] -> 10) as the notebook does: batch 32 (the last
batch smaller), Adam 1e-3 with Keras's constants, the training set reshuffled every epoch,
softmax cross-entropy on the last layer's pre-activation outputs (what Keras's sparse
cross-entropy computes on a sigmoid output), Glorot-uniform weights. Inputs are plain NumPy
arrays (uint8 images, integer labels); nothing here imports mnistexp. Each returns
(fit seconds, test accuracy); compilation (XLA, jit, torch.compile) counts as fit time.
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np

BETA_1, BETA_2, EPSILON, LEARNING_RATE = 0.9, 0.999, 1e-7, 1e-3  # keras.optimizers.Adam's defaults


def initial_weights(hidden: int, seed: int) -> list[np.ndarray]:
    """Glorot-uniform kernels and zero biases, as Keras's Dense starts: [w1, b1, (w2, b2)]."""
    rng = np.random.default_rng(seed)
    widths = [784, *([hidden] if hidden else []), 10]
    params = []
    for fan_in, fan_out in itertools.pairwise(widths):
        limit = np.sqrt(6 / (fan_in + fan_out))
        params += [rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32), np.zeros(fan_out, np.float32)]
    return params


def flat(images: np.ndarray) -> np.ndarray:
    return (images.reshape(len(images), -1) / np.float32(255)).astype(np.float32)


def keras_fit(x_train, y_train, x_test, y_test, hidden: int, epochs: int, batch_size: int, seed: int):
    """The notebook: a Sequential model, `model.fit` with its defaults (all cores, no XLA settings)."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((784,))]
    layers += [keras.layers.Dense(hidden, activation="relu")] if hidden else []
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="sigmoid")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, test = flat(x_train), flat(x_test)
    started = time.perf_counter()
    model.fit(x, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - started
    return seconds, float(model.evaluate(test, y_test, verbose=0)[1])


def torch_epochs(
    x_train, y_train, x_test, y_test, hidden: int, epochs: int, batch_size: int, seed: int, compiled: bool = False
):
    """PyTorch on every core: each epoch permutes the whole training set with one gather, then
    steps through contiguous batches with the fused Adam; `compiled` runs the step through
    torch.compile (Inductor's C++ code)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(seed)
    weights = [torch.from_numpy(array) for array in initial_weights(hidden, seed)]
    layers: list = []
    for kernel, bias in zip(weights[::2], weights[1::2], strict=True):
        linear = torch.nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(kernel.T)
            linear.bias.copy_(bias)
        layers += [linear, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, betas=(BETA_1, BETA_2), eps=EPSILON, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.from_numpy(flat(x_train)), torch.from_numpy(y_train.astype(np.int64))

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        optimizer.step()

    run_step = torch.compile(step) if compiled else step
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        xs, ys = x[order], y[order]
        for start in range(0, len(xs), batch_size):
            run_step(xs[start : start + batch_size], ys[start : start + batch_size])
    seconds = time.perf_counter() - started
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(flat(x_test))).argmax(1).numpy() == y_test).mean()
    return seconds, float(accuracy)


def torch_compiled(x_train, y_train, x_test, y_test, hidden: int, epochs: int, batch_size: int, seed: int):
    return torch_epochs(x_train, y_train, x_test, y_test, hidden, epochs, batch_size, seed, compiled=True)


def jax_scan(x_train, y_train, x_test, y_test, hidden: int, epochs: int, batch_size: int, seed: int):
    """JAX on XLA's default threads: one jitted function per epoch draws the permutation, gathers
    each batch and runs every Adam step (optax) in a `lax.scan`; parameters and optimizer state
    are donated buffers, so an epoch updates them in place."""
    import jax
    import jax.numpy as jnp
    import optax

    def forward(params, x):
        for kernel, bias in zip(params[:-2:2], params[1:-2:2], strict=True):
            x = jax.nn.relu(x @ kernel + bias)
        return x @ params[-2] + params[-1]

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    adam = optax.adam(LEARNING_RATE, b1=BETA_1, b2=BETA_2, eps=EPSILON)
    size = len(x_train)
    full_steps, remainder = divmod(size, batch_size)

    def epoch(params, state, key, x, y):
        def train_step(carry, indices):
            params, state = carry
            grads = jax.grad(loss_fn)(params, x[indices], y[indices])
            updates, state = adam.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        order = jax.random.permutation(key, size)
        carry, _ = jax.lax.scan(train_step, (params, state), order[: full_steps * batch_size].reshape(-1, batch_size))
        if remainder:  # the last, smaller batch, as fit makes it
            carry, _ = train_step(carry, order[full_steps * batch_size :])
        return carry

    # The data are arguments, not constants folded into the program; parameters and optimizer
    # state are donated, so each epoch updates them in place.
    epoch = jax.jit(epoch, donate_argnums=(0, 1))
    x, y = jnp.asarray(flat(x_train)), jnp.asarray(y_train, dtype=jnp.int32)
    params = [jnp.asarray(array) for array in initial_weights(hidden, seed)]
    state = adam.init(params)
    key = jax.random.key(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        key, epoch_key = jax.random.split(key)
        params, state = epoch(params, state, epoch_key, x, y)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - started
    logits = forward(params, jnp.asarray(flat(x_test)))
    return seconds, float((np.asarray(logits).argmax(1) == y_test).mean())


TRAINERS = {
    "keras_fit": (keras_fit, "keras"),
    "torch_epochs": (torch_epochs, "torch"),
    "torch_compiled": (torch_compiled, "torch"),
    "jax_scan": (jax_scan, "jax"),
}
