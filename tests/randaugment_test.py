"""RandAugment: each op against PIL (what timm runs), timm's levels, the
parser, one draw per clip, determinism, and the pipeline with it on."""

import os

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
import pytest
import tensorflow as tf

from configs import args
from cover_jax import input as inp
from cover_jax.input import make
from cover_jax.input import pipeline
from cover_jax.input import randaugment as ra
from tests import synthetic_data

FILL = (124, 116, 104)  # timm's img_mean for ImageNet's mean
BILINEAR = dict(resample=Image.BILINEAR, fillcolor=FILL)


def as_tf_data_traces(fn, **kwargs):
  """fn as a tf.function traced as the input pipeline's maps are
  (`pipeline._traced`): as written, without autograph's rewrite."""
  return tf.function(fn, autograph=False, **kwargs)


def images(height=40, width=48):
  """uint8 [3, h, w, 3]: smooth colour blobs with noise (every level used),
  a low-contrast one (autocontrast and equalize stretch it) and a nearly
  flat one (one or two levels a channel: their degenerate cases)."""
  rng = np.random.default_rng(0)
  coarse = rng.uniform(0, 255, (1, 6, 7, 3)).astype(np.float32)
  smooth = tf.image.resize(coarse, [height, width]).numpy()[0]
  textured = smooth + rng.normal(0, 10, smooth.shape)
  low = 100 + 0.2 * smooth + rng.normal(0, 2, smooth.shape)
  flat = np.full(smooth.shape, 77.0)
  flat[::5, ::7, 0] = 78
  return np.stack([np.clip(x, 0, 255).round() for x in (textured, low, flat)]
                  ).astype(np.uint8)


def pil_solarize_add(image, add, thresh=128):
  """timm's solarize_add, as it writes it (a PIL look-up table)."""
  lut = [min(255, i + add) if i < thresh else i for i in range(256)]
  return image.point(lut * 3)


def pil_posterize(image, bits):
  """timm's posterize; this Pillow refuses bits=0, which older Pillow (and
  TF's RandAugment) turn black: the closed form then."""
  if bits >= 8:
    return image
  if bits == 0:
    return Image.fromarray(np.zeros_like(np.asarray(image)))
  return ImageOps.posterize(image, bits)


def affine(coefficients):
  return lambda im: im.transform(im.size, Image.AFFINE, coefficients,
                                 **BILINEAR)


# (op, its argument, PIL's version of it): arguments at the ends and inside
# of timm's ranges (magnitude 0..10 and the sign).
COLOUR_CASES = [
    ("AutoContrast", None, ImageOps.autocontrast),
    ("Equalize", None, ImageOps.equalize),
    ("Invert", None, ImageOps.invert),
    *[("Posterize", b, lambda im, b=b: pil_posterize(im, b))
      for b in (0, 1, 2, 3, 4, 8)],
    *[("Solarize", t, lambda im, t=t: ImageOps.solarize(im, t))
      for t in (0, 25, 128, 230, 256)],
    *[("SolarizeAdd", a, lambda im, a=a: pil_solarize_add(im, a))
      for a in (0, 44, 99, 110)],
    *[(name, f, lambda im, f=f, e=enhancer: e(im).enhance(f))
      for name, enhancer in (("Color", ImageEnhance.Color),
                             ("Contrast", ImageEnhance.Contrast),
                             ("Brightness", ImageEnhance.Brightness),
                             ("Sharpness", ImageEnhance.Sharpness))
      for f in (0.1, 0.46, 1.0, 1.72, 1.9)],
]
GEOMETRIC_CASES = [
    *[("Rotate", d, lambda im, d=d: im.rotate(d, **BILINEAR))
      for d in (0.0, 3.0, -13.5, 27.0, -30.0)],
    *[("ShearX", s, affine((1, s, 0, 0, 1, 0))) for s in (0.06, -0.27, 0.3)],
    *[("ShearY", s, affine((1, 0, 0, s, 1, 0))) for s in (0.06, -0.27, 0.3)],
    *[("TranslateXRel", p, affine((1, 0, p * 48, 0, 1, 0)))
      for p in (0.045, -0.2, 0.405, -0.45)],
    *[("TranslateYRel", p, affine((1, 0, 0, 0, 1, p * 40)))
      for p in (0.045, -0.2, 0.405, -0.45)],
]


def ours(name, value, clip):
  return ra.apply(name, tf.constant(clip), value, FILL).numpy()


def pil(reference, clip):
  return np.stack([np.asarray(reference(Image.fromarray(f))) for f in clip])


@pytest.mark.parametrize("name,value,reference", COLOUR_CASES)
def test_colour_ops_equal_pils(name, value, reference):
  """Bit for bit, frame by frame: each frame's statistics are its own."""
  clip = images()
  got = ours(name, value, clip)
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, pil(reference, clip))


@pytest.mark.parametrize("name,value,reference", GEOMETRIC_CASES)
def test_geometric_ops_equal_pils_but_for_float32_ties(name, value, reference):
  """Same sampling points, bilinear weights, fill rule (outside: fill; at
  the edge: the edge pixel) and truncation as PIL. PIL computes coordinates
  and weights in double, TensorFlow's transform in float32: where the exact
  value is an integer (neighbours whose difference the weight divides
  exactly) the two may truncate to either side of it, so a pixel may differ
  by 1, and only few do."""
  clip = images()
  got = ours(name, value, clip).astype(int)
  want = pil(reference, clip).astype(int)
  assert np.abs(got - want).max() <= 1
  assert np.mean(got != want) < 0.05
  # The fill is where PIL puts it, exactly.
  np.testing.assert_array_equal(np.all(got == FILL, axis=-1),
                                np.all(want == FILL, axis=-1))


def test_an_integer_translation_is_exact():
  clip = images()
  got = ours("TranslateXRel", -0.25, clip)  # 12 px to the right
  want = np.full_like(clip, 0) + np.array(FILL, np.uint8)
  want[:, :, 12:] = clip[:, :, :-12]
  np.testing.assert_array_equal(got, want)


# -- timm's levels ----------------------------------------------------------


@pytest.mark.parametrize("m", [0, 3, 5, 9, 10])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_levels_are_timms(m, sign):
  """timm's level-to-argument functions, written out."""
  plain, inc = ra.Policy(), ra.Policy(increasing=True)
  expected = {
      "Rotate": sign * m / 10 * 30, "Posterize": int(m / 10 * 4),
      "Solarize": int(m / 10 * 256), "SolarizeAdd": int(m / 10 * 110),
      "Color": m / 10 * 1.8 + 0.1, "Contrast": m / 10 * 1.8 + 0.1,
      "Brightness": m / 10 * 1.8 + 0.1, "Sharpness": m / 10 * 1.8 + 0.1,
      "ShearX": sign * m / 10 * 0.3, "ShearY": sign * m / 10 * 0.3,
      "TranslateXRel": sign * m / 10 * 0.45,
      "TranslateYRel": sign * m / 10 * 0.45}
  increasing = dict(
      expected, Posterize=4 - int(m / 10 * 4),
      Solarize=256 - int(m / 10 * 256),
      **{k: max(0.1, 1.0 + sign * m / 10 * 0.9)
         for k in ("Color", "Contrast", "Brightness", "Sharpness")})
  for policy, table in ((plain, expected), (inc, increasing)):
    for name, value in table.items():
      got = ra.argument(name, policy, m, sign).numpy()
      assert got == pytest.approx(value, abs=1e-12), (name, policy)
      # Traced, as tf.data runs it, from the float32 draws (eager mode let
      # a float32 constant meet a float64 tensor that graph mode refuses).
      traced = as_tf_data_traces(lambda m, s, name=name, policy=policy:
                                 ra.argument(name, policy, m, s))(
                               tf.constant(m, tf.float32),
                               tf.constant(sign, tf.float32)).numpy()
      assert traced == pytest.approx(value, abs=1e-6), (name, policy)
    for name in ("AutoContrast", "Equalize", "Invert"):
      assert ra.argument(name, policy, m, sign) is None
  assert ra.NAMES == (
      "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
      "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX",
      "ShearY", "TranslateXRel", "TranslateYRel")  # timm's _RAND_TRANSFORMS


def test_draws_follow_timms_distribution():
  """Ops uniform, each applied with probability 1/2, signs +-1 evenly,
  magnitude M exactly without mstd, gaussian around M with it, clipped to
  [0, mmax or 10], uniform in [0, M] for mstd > 100."""
  def many(spec, n=400):
    policy = ra.parse(spec)
    draw = as_tf_data_traces(lambda seed: ra.draws(policy, seed))
    rows = [d for s in range(n) for d in draw(tf.constant([s, 7], tf.int64))]
    return [np.array([r[k].numpy() for r in rows]) for k in range(4)]

  index, applied, magnitude, sign = many("rand-m9-n2")
  counts = np.bincount(index, minlength=15)
  assert len(counts) == 15 and counts.min() > 800 / 15 / 2
  assert 0.45 < applied.mean() < 0.55 and 0.45 < (sign > 0).mean() < 0.55
  assert set(sign) == {1.0, -1.0} and np.all(magnitude == 9)
  _, _, magnitude, _ = many("rand-m9-n2-mstd0.5")
  assert magnitude.max() == 10 and magnitude.min() >= 0
  unclipped = magnitude[magnitude < 10]
  assert abs(np.median(magnitude) - 9) < 0.1 and unclipped.std() < 0.5
  _, _, magnitude, _ = many("rand-m15-n1-mstd1-mmax20")
  assert abs(magnitude.mean() - 15) < 0.2 and magnitude.max() > 16
  assert np.all(many("rand-m15-n1")[2] == 10)  # clipped to 10 by default
  _, _, magnitude, _ = many("rand-m8-n1-mstd101")
  assert magnitude.min() >= 0 and magnitude.max() <= 8
  assert abs(magnitude.mean() - 4) < 0.4


# -- The parser -------------------------------------------------------------


@pytest.mark.parametrize("spec,policy", [
    ("rand-m9-n2", ra.Policy(9, 2)),
    ("rand-n3-m5", ra.Policy(5, 3)),
    ("rand-m9-n2-mstd0.5", ra.Policy(9, 2, magnitude_std=0.5)),
    ("rand-m9-mstd0.5-inc1", ra.Policy(9, 2, 0.5, increasing=True)),
    ("rand-m7-n4-mstd1-mmax15-inc0", ra.Policy(7, 4, 1.0, 15)),
    ("rand", ra.Policy(10, 2)),  # timm's defaults
])
def test_parse_reads_timms_notation(spec, policy):
  assert ra.parse(spec) == policy


@pytest.mark.parametrize("spec,part", [
    ("rnd-m9-n2", "'rnd'"), ("m9-n2", "'m9'"), ("rand-m9-x2", "'x2'"),
    ("rand-m9-n0", "'n0'"), ("rand-m9.5-n2", "'m9.5'"),
    ("rand-m-n2", "'m'"), ("rand-m9-n2-mstd", "'mstd'"),
    ("rand-m9-n2-inc2", "'inc2'"), ("rand-m9-m5", "'m' is given twice"),
    ("rand-m9-n2-w0", "'w0'"), ("rand-m9--n2", "''"),
    ("rand-m9-n2-mmax0", "'mmax0'"),
])
def test_parse_names_the_bad_part_and_the_form(spec, part):
  with pytest.raises(ValueError) as error:
    ra.parse(spec)
  message = str(error.value)
  assert part in message and "'rand-m<M>-n<N>'" in message
  assert f"config.input.randaugment={spec!r}" in message


def test_configs_take_the_field_off_by_default():
  """Every config has it, "" (off): the paper configs and the mini ones;
  set, it reaches Preprocessing; a bad string is refused there."""
  for name in ("cover_b16_i21k.py", "cover_l16_jft.py", "cover_mini.py",
               "vit_mini.py", "timesformer_b16_k400.py"):
    config = args.load(os.path.join(args.CONFIG_DIR, name), lock=True)
    assert config.input.randaugment == ""
    assert make.preprocessing(config).randaugment == ""
    config.input.randaugment = "rand-m9-n2-mstd0.5"  # a locked config takes it
    assert make.preprocessing(config).randaugment == "rand-m9-n2-mstd0.5"
    config.input.randaugment = "rand-m9-n2-q"
    with pytest.raises(ValueError, match="'q'"):
      make.preprocessing(config)


# -- One draw per clip, determinism ------------------------------------------


SEEDS = [tf.constant([s, 11], tf.int64) for s in range(40)]
STRONG = ra.parse("rand-m9-n3-mstd0.5")
# Traced once (eager calls would trace every op's branch each time).
strong = as_tf_data_traces(
    lambda clip, seed: ra.augment(clip, STRONG, seed, FILL),
    input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8),
                     tf.TensorSpec([2], tf.int64)])


def test_a_clip_of_identical_frames_stays_identical_frames():
  frame = images()[0]
  clip = np.stack([frame] * 4)
  changed = 0
  for seed in SEEDS:
    out = strong(clip, seed).numpy()
    for t in range(1, 4):
      np.testing.assert_array_equal(out[t], out[0])
    changed += not np.array_equal(out[0], frame)
  assert changed > len(SEEDS) / 2  # the ops did run


def test_each_frame_gets_what_it_would_get_alone():
  """Frame t of an augmented clip is that frame augmented alone with the
  same seed: one op sequence, one set of arguments, per-frame statistics."""
  clip = images()
  for seed in SEEDS:
    whole = strong(clip, seed).numpy()
    for t in range(len(clip)):
      alone = strong(clip[t:t + 1], seed).numpy()
      np.testing.assert_array_equal(whole[t:t + 1], alone)


def test_deterministic_in_the_seed():
  clip = tf.constant(images())
  first = [strong(clip, s).numpy() for s in SEEDS[:10]]
  again = [ra.augment(clip, STRONG, s, FILL).numpy() for s in SEEDS[:10]]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert len({a.tobytes() for a in first}) >= 8  # seeds differ


# -- In the pipeline ------------------------------------------------------


PREP = inp.Preprocessing(num_frames=8, crop_size=16, scale_range=(1.0, 1.2))
AUGMENTED = inp.Preprocessing(num_frames=8, crop_size=16,
                              scale_range=(1.0, 1.2),
                              randaugment="rand-m9-n2-mstd0.5")


def test_preprocessing_refuses_a_bad_string():
  with pytest.raises(ValueError, match="'m9x'"):
    inp.Preprocessing(num_frames=8, crop_size=16, randaugment="rand-m9x")


def test_training_applies_it_after_crop_and_flip_with_the_example_seed():
  """preprocess_train with randaugment = RandAugment of what it returns
  without, with the seed folded from the example's."""
  encoded = tf.constant([synthetic_data.jpeg(synthetic_data.frame(t, 24, 32))
                         for t in range(8)])
  for s in range(6):
    seed = tf.constant([s, 3], tf.int64)
    plain = pipeline.preprocess_train(encoded, seed, flip=tf.constant(True),
                                      prep=PREP)
    want = ra.augment(plain, ra.parse(AUGMENTED.randaugment),
                      tf.random.experimental.stateless_fold_in(
                          seed, pipeline.RANDAUGMENT_STREAM),
                      ra.fill_of(PREP.mean))
    got = pipeline.preprocess_train(encoded, seed, flip=tf.constant(True),
                                    prep=AUGMENTED)
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_the_named_recipes_randaugment_runs_in_a_traced_pipeline():
  """`strong`'s string (configs/recipes.py, with inc1) through
  preprocess_train as tf.data traces it: uint8 clips of the crop's shape,
  and not the clip without it."""
  from configs import args  # pylint: disable=import-outside-toplevel
  spec = args.load("configs/cover_mini.py:strong").input.randaugment
  assert "inc1" in spec
  prep = inp.Preprocessing(num_frames=8, crop_size=16,
                           scale_range=(1.0, 1.2), randaugment=spec)
  encoded = tf.constant([synthetic_data.jpeg(synthetic_data.frame(t, 24, 32))
                         for t in range(8)])
  traced = {p.randaugment: as_tf_data_traces(
      lambda seed, p=p: pipeline.preprocess_train(
          encoded, seed, flip=tf.constant(True), prep=p)) for p in (PREP, prep)}
  differ = 0
  for s in range(4):
    seed = tf.constant([s, 5], tf.int64)
    got = traced[spec](seed).numpy()
    assert got.shape == (8, 16, 16, 3) and got.dtype == np.uint8
    differ += not np.array_equal(got, traced[""](seed).numpy())
  assert differ >= 3


@pytest.mark.slow
def test_pipeline_with_randaugment_differs_and_resumes(synthetic_dir):
  """Set: other training pixels than without (videos and images), the same
  labels and datasets; an iterator restored from the state after a batch
  yields the next batch's pixels exactly (stateless in the example seed)."""
  sources = [inp.open_source(name, "train",
                             dataset=f"synthetic_clips/{name}",
                             data_dir=synthetic_dir)
             for name in ("image", "video")]

  def batches(prep, n, state=None):
    it = inp.TrainIterator(sources, prep, flips=[True, True], global_batch=8,
                           seed=5, state=state)
    try:
      out = [next(it)]
      state = it.state()
      return out + [next(it) for _ in range(n - 1)], state
    finally:
      it.close()

  (plain, _), (augmented, after_one) = (batches(PREP, 2),
                                        batches(AUGMENTED, 2))
  (resumed, _), = [batches(AUGMENTED, 1, state=after_one)]
  for part in ("video", "image"):
    np.testing.assert_array_equal(resumed[0][part]["frames"],
                                  augmented[1][part]["frames"])
    for p, a in zip(plain, augmented):
      np.testing.assert_array_equal(a[part]["label"], p[part]["label"])
      np.testing.assert_array_equal(a[part]["dataset"], p[part]["dataset"])
      assert a[part]["frames"].shape == p[part]["frames"].shape
      assert a[part]["frames"].dtype == np.uint8
    changed = [not np.array_equal(x, y) for p, a in zip(plain, augmented)
               for x, y in zip(p[part]["frames"], a[part]["frames"])]
    assert np.mean(changed) > 0.4, part
