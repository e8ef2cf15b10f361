"""Build the Keras classifier that the model and preprocess configs describe."""

from __future__ import annotations

import keras
from keras import layers

from mnistexp.config.schema import DataConfig, ModelConfig, PreprocessConfig
from mnistexp.config.validation import hidden_layer_sizes


def build(model_cfg: ModelConfig, preprocess_cfg: PreprocessConfig, data_cfg: DataConfig) -> keras.Model:
    """Raw uint8 images in, class scores out; scaling and flattening are layers of the model."""
    inputs = keras.Input(shape=tuple(data_cfg.image_shape), dtype="uint8", name="image")
    # Rescaling also casts uint8 to float, so it stays (as a plain cast) when scaling is off.
    x = layers.Rescaling(1 / 255 if preprocess_cfg.scale else 1.0, name="scale")(inputs)
    x = layers.Flatten(name="flatten")(x)
    sizes = hidden_layer_sizes(model_cfg.hidden_units)
    for index, units in enumerate(sizes, start=1):
        x = layers.Dense(units, activation=model_cfg.hidden_activation, name=f"hidden_{index}")(x)
    outputs = layers.Dense(len(data_cfg.class_names), activation=model_cfg.output_activation, name="output")(x)
    return keras.Model(inputs, outputs, name=name_of(model_cfg))


def name_of(model_cfg: ModelConfig) -> str:
    """`linear` for no hidden layer, `dense_100`, `dense_256_128`: a run's name unless tracking.run_name."""
    sizes = hidden_layer_sizes(model_cfg.hidden_units)
    return "dense_" + "_".join(map(str, sizes)) if sizes else "linear"
