"""Process-level concerns: platform and jax.distributed start-up, signals, the allocator."""
