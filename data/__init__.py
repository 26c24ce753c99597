"""TFDS builders of the datasets cover-jax trains on (see README)."""
