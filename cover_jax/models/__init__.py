"""TimeSformer model, its variants, its FLOP count (flops) and the import of
pretrained ViT and TimeSformer weights (pretrained)."""

from cover_jax.models.timesformer import (VARIANTS, TimeSformer,
                                          abstract_variables, create,
                                          init_params, scan_params,
                                          unboxed, unscan_params, variant)

__all__ = ["VARIANTS", "TimeSformer", "abstract_variables", "create",
           "init_params", "scan_params", "unboxed", "unscan_params", "variant"]
