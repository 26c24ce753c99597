"""cover-jax: CoVeR (co-training videos and images) with a TimeSformer in JAX."""
