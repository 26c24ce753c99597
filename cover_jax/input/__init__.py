"""Input pipeline: frame sampling, decoding, augmentation, the co-training mix."""

from cover_jax.input.pipeline import (PARTS, Preprocessing, TrainIterator,
                                      check_sources, eval_batches,
                                      eval_num_batches, mixture_split,
                                      preprocess_eval, split_batch, to_global)
from cover_jax.input.source import (CorruptData, InputError, Source,
                                    check_head, open_source)
from cover_jax.input import make
