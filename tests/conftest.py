"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""),
     "--xla_force_host_platform_device_count=8"]).strip()
# Tests must never touch an accelerator that happens to be present.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
