"""mnistexp: config-driven MNIST experiments with Hydra, Keras and MLflow."""

__version__ = "0.1.0"
