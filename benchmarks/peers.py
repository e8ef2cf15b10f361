"""Reference trainers for the benchmark: the notebook's `model.fit`, a PyTorch eager loop, a JAX `lax.scan` loop.

Each trains the seed model (784 -> [hidden, relu] -> 10) with the seed's settings: batch 32, Adam
1e-3 with Keras's constants, the training set reshuffled every epoch, softmax cross-entropy on
the last layer's pre-activation outputs (what Keras's sparse cross-entropy computes on a sigmoid
output). Each returns (fit seconds, test accuracy).
"""

from __future__ import annotations

import itertools
import time

import numpy as np

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7  # keras.optimizers.Adam's defaults


def _init(hidden: int, seed: int) -> list[np.ndarray]:
    """Glorot-uniform weights and zero biases, as Keras's Dense starts."""
    rng = np.random.default_rng(seed)
    widths = [784, *([hidden] if hidden else []), 10]
    params = []
    for fan_in, fan_out in itertools.pairwise(widths):
        limit = np.sqrt(6 / (fan_in + fan_out))
        params += [rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32), np.zeros(fan_out, np.float32)]
    return params


def keras_fit(data, hidden: int, epochs: int, batch_size: int, seed: int) -> tuple[float, float]:
    """The notebook: Sequential Flatten/Dense, `model.fit` with default settings."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((28, 28)), keras.layers.Flatten()]
    layers += [keras.layers.Dense(hidden, activation="relu")] if hidden else []
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="sigmoid")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x_train, x_test = data.x_train / 255, data.x_test / 255
    started = time.perf_counter()
    model.fit(x_train, data.y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - started
    return seconds, float(model.evaluate(x_test, data.y_test, verbose=0)[1])


def torch_eager(data, hidden: int, epochs: int, batch_size: int, seed: int) -> tuple[float, float]:
    import torch

    torch.manual_seed(seed)
    weights = _init(hidden, seed)
    layers: list = []
    for weight, bias in zip(weights[::2], weights[1::2], strict=False):
        linear = torch.nn.Linear(*weight.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight.T.copy()))
            linear.bias.copy_(torch.from_numpy(bias))
        layers += [linear, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(BETA_1, BETA_2), eps=EPSILON)
    x = torch.tensor(data.x_train.reshape(-1, 784), dtype=torch.float32) / 255
    y = torch.tensor(data.y_train, dtype=torch.long)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        for indices in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[indices]), y[indices]).backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        test = torch.tensor(data.x_test.reshape(-1, 784), dtype=torch.float32) / 255
        accuracy = (model(test).argmax(1).numpy() == data.y_test).mean()
    return seconds, float(accuracy)


def jax_scan(data, hidden: int, epochs: int, batch_size: int, seed: int) -> tuple[float, float]:
    """One jitted `lax.scan` over the batches of an epoch, Adam written out (no optax needed)."""
    import jax
    import jax.numpy as jnp

    def forward(params, x):
        for weight, bias in zip(params[:-2:2], params[1:-2:2], strict=False):
            x = jax.nn.relu(x @ weight + bias)
        return x @ params[-2] + params[-1]

    def loss_fn(params, x, y):
        logits = forward(params, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    def step(state, batch):
        params, m, v, t = state
        x, y = batch
        grads = jax.grad(loss_fn)(params, x, y)
        t = t + 1
        alpha = 1e-3 * jnp.sqrt(1 - BETA_2**t) / (1 - BETA_1**t)
        m = [mi + (g - mi) * (1 - BETA_1) for mi, g in zip(m, grads, strict=False)]
        v = [vi + (g * g - vi) * (1 - BETA_2) for vi, g in zip(v, grads, strict=False)]
        params = [p - alpha * mi / (jnp.sqrt(vi) + EPSILON) for p, mi, vi in zip(params, m, v, strict=False)]
        return (params, m, v, t), None

    @jax.jit
    def epoch(state, x, y, order):
        batches = order[: len(order) // batch_size * batch_size].reshape(-1, batch_size)
        state, _ = jax.lax.scan(step, state, (x[batches], y[batches]))
        return state

    params = [jnp.asarray(p) for p in _init(hidden, seed)]
    state = (params, [jnp.zeros_like(p) for p in params], [jnp.zeros_like(p) for p in params], 0.0)
    x = jnp.asarray(data.x_train.reshape(-1, 784), dtype=jnp.float32) / 255
    y = jnp.asarray(data.y_train, dtype=jnp.int32)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        state = epoch(state, x, y, jnp.asarray(rng.permutation(len(x))))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - started
    logits = forward(state[0], jnp.asarray(data.x_test.reshape(-1, 784), dtype=jnp.float32) / 255)
    return seconds, float((np.asarray(logits).argmax(1) == data.y_test).mean())
