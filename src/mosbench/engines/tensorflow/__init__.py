"""The TensorFlow / Keras 3 engine: models, compiled steps, devices."""
