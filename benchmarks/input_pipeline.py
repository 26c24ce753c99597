"""Clips per second per CPU core of the training input pipeline.

The input pipeline must never be what a training step waits for. This script
measures how many training clips one CPU core turns out, and how many cores
one accelerator therefore needs.

1. Source videos: `--num_videos` Kinetics-like clips (default 10 s; 25 fps,
   640x360, H.264 in mp4), written with PyAV. Their content compresses like
   real video: a colour texture with a 1/f^1.6 spectrum (natural scenes are
   near 1/f; web video is blurrier) under a panning camera, a textured
   object moving across it, a slow change of lighting and mild sensor
   noise. Pure noise would make the stored JPEGs unrealistically large and
   slow to decode, flat colour unrealistically small and fast; the script
   prints the mean stored JPEG size per frame (real Kinetics frames at
   short side 320 are about 15-30 KB at quality 90).
2. Prepared with the real prepare command (`python -m data.prepare folder`)
   at short side 320 (for 224 crops) and 512 (for 448 crops); the prepare
   throughput is printed. Images: `NUM_IMAGES` ImageNet-sized JPEGs (500x375
   and 375x500, quality 90) of the same texture, stored as they are (as TFDS
   imagenet2012 stores them). Videos and datasets are reused from
   `--data_dir`.
3. Measured, for 8x224 clips from short side 320, 16x448 clips from short
   side 512 and 448 crops of the images (scale jitter (256/224, 320/224) of
   the crop, as TimeSformer's recipe: short side jittered in [256, 320] for
   224), each decoding only the sampled frames' crop window:
   - `TrainIterator`, the real training pipeline, with one tf.data thread and
     with one per core;
   - the CPU time of one `Source.read` of a batch (the pipeline's Python
     part, which holds the interpreter lock);
   - with `--randaugment=rand-m9-n2` (any config.input.randaugment), also
     `TrainIterator` with that RandAugment, one thread: its cost against
     the same iterator without.
   Each measurement warms up, then runs `--rounds` rounds of at least
   `--seconds` s; medians are reported. Clips per core is clips per second
   of process CPU time (all threads), so it holds whatever the thread count
   and however busy the shared machine is; wall-clock clips/s are printed
   too.
4. Compared with the model: the clips per second one accelerator consumes
   when training at an assumed MFU (`--mfu`, 0.4) on an H100 and on a TPU v4
   chip, from the analytic FLOPs of `cover_jax.models.flops`, hence the CPU
   cores per accelerator the pipeline needs; and, on this CPU machine, the
   share of a core it needs to feed the CPU training step measured by
   `benchmarks/train_step.py`.

    python benchmarks/input_pipeline.py                  # the full run
    python benchmarks/input_pipeline.py --quick          # a smoke check, ~1 min
    python benchmarks/input_pipeline.py --quick --randaugment=rand-m9-n2
    python benchmarks/input_pipeline.py --data_dir=DIR --json=out.json

Records are read from the page cache here (the datasets fit in memory);
reading from a disk or a network file system is not measured.
Figures from earlier runs are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

import av
import numpy as np
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

from cover_jax.input import randaugment
from cover_jax.input.pipeline import Preprocessing, TrainIterator
from cover_jax.input.source import Source, open_source
from cover_jax.models import create, flops
from cover_jax.runtime import allocator
from data import features as data_features
from data import registry


@dataclasses.dataclass(frozen=True)
class Setting:
  """A clip shape the model is trained on and the frames it is cut from."""
  name: str
  short_side: int | None  # of the stored frames (None: images as they are)
  num_frames: int  # 1: images
  crop_size: int
  # Short side resized to [256, 320] for a 224 crop (TimeSformer's recipe),
  # expressed as multiples of the crop, the same for 448.
  scale_range: tuple[float, float] = (256 / 224, 320 / 224)

  def preprocessing(self, randaugment: str = "") -> Preprocessing:
    return Preprocessing(num_frames=self.num_frames, crop_size=self.crop_size,
                         scale_range=self.scale_range,
                         randaugment=randaugment)


SETTINGS = (Setting("8x224", short_side=320, num_frames=8, crop_size=224),
            Setting("16x448", short_side=512, num_frames=16, crop_size=448),
            Setting("image448", short_side=None, num_frames=1,
                    crop_size=448))
MODELS = ("B/16", "L/16")
# Dense bf16 peak FLOP/s per chip, and the CPU cores a typical host has per
# chip: DGX H100 (2 x 56-core Xeon 8480C, 8 GPUs); TPU v4 VM (240 vCPUs =
# 120 cores, 4 chips).
ACCELERATORS = {"H100": (989e12, 112 / 8), "TPU v4": (275e12, 120 / 4)}
# The CPU training step of benchmarks/train_step.py at 8x224 (d=768, 2
# blocks, batch 2): median of the five runs in RESULTS.md, 2026-11-24.
CPU_STEP = dict(config="d768x2 8x224", batch=2, step_seconds=2.313)

FPS = 25
WIDTH, HEIGHT = 640, 360
NUM_CLASSES = 4
NUM_IMAGES = 200


# -- Source videos -------------------------------------------------------------


def pink_texture(rng, height: int, width: int, slope: float = 1.6):
  """float32 [h, w, 3], unit variance: noise with a 1/f^slope amplitude
  spectrum, mostly shared luminance with weaker colour, like a scene."""
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  f = np.hypot(fx, fy)
  f[0, 0] = 1.0
  shape = (3, height, width // 2 + 1)
  spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
  spectrum /= f**slope
  spectrum[:, 0, 0] = 0
  x = np.fft.irfft2(spectrum, s=(height, width))
  x /= x.std(axis=(1, 2), keepdims=True)
  luma, a, b = x
  rgb = np.stack([luma + 0.35 * a, luma + 0.35 * b, luma - 0.175 * (a + b)],
                 axis=-1)
  return rgb.astype(np.float32)


def video_frames(seed: int, num_frames: int):
  """uint8 [HEIGHT, WIDTH, 3] frames of one synthetic video."""
  rng = np.random.default_rng(seed)
  pad_y, pad_x = 100, 200
  scene = pink_texture(rng, HEIGHT + 2 * pad_y, WIDTH + 2 * pad_x)
  size = 160
  thing = pink_texture(rng, size, size) + 1.0  # brighter than the scene
  yy, xx = np.mgrid[:size, :size]
  mask = np.clip(1.3 - np.hypot((yy - size / 2) / 70, (xx - size / 2) / 50),
                 0, 1)[..., None].astype(np.float32)
  ramp = np.linspace(-1, 1, WIDTH, dtype=np.float32)[None, :, None]
  pan, move = rng.uniform(0.15, 0.45), rng.uniform(0.5, 1.2)  # rad/s
  phase = rng.uniform(0, 2 * np.pi)
  for i in range(num_frames):
    t = i / FPS
    y = int(pad_y + 0.8 * pad_y * np.sin(0.7 * pan * t + phase))
    x = int(pad_x + 0.9 * pad_x * np.sin(pan * t))
    frame = scene[y:y + HEIGHT, x:x + WIDTH].copy()
    y = int((HEIGHT - size) / 2 * (1 + 0.8 * np.cos(0.7 * move * t)))
    x = int((WIDTH - size) / 2 * (1 + 0.9 * np.sin(move * t + phase)))
    window = frame[y:y + size, x:x + size]
    window[:] = window * (1 - mask) + thing * mask
    light = 20 * (0.5 + 0.5 * np.sin(0.5 * t + phase))
    frame = 128 + 40 * frame + light * ramp
    frame += rng.standard_normal(frame.shape, dtype=np.float32) * 2
    yield np.clip(frame, 0, 255).astype(np.uint8)


def write_video(path: str, seed: int, seconds: float):
  """An H.264 mp4, written under a hidden name and then renamed, so that a
  killed run never leaves a partial video that looks complete."""
  partial = os.path.join(os.path.dirname(path),
                         "." + os.path.basename(path) + ".partial")
  with av.open(partial, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"preset": "veryfast", "crf": "23"}
    for image in video_frames(seed, int(round(seconds * FPS))):
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  os.replace(partial, path)


def make_videos(root: str, num_videos: int, seconds: float) -> float:
  """ROOT/train/<class>/<video>.mp4; returns the seconds spent (0: reused)."""
  start = time.perf_counter()
  wrote = False
  for i in range(num_videos):
    folder = os.path.join(root, "train", f"class{i % NUM_CLASSES}")
    path = os.path.join(folder, f"video{i:04d}.mp4")
    if not os.path.exists(path):
      os.makedirs(folder, exist_ok=True)
      write_video(path, seed=i, seconds=seconds)
      wrote = True
  return time.perf_counter() - start if wrote else 0.0


# -- Prepared datasets ---------------------------------------------------------


def prepare(videos: str, name: str, data_dir: str, short_side: int) -> float:
  """Prepares `video_folder/NAME` with the real prepare command; returns its
  wall seconds (process start included), or 0 where it was already there."""
  if f"video_folder/{name}" in registry.prepared_folder_datasets(data_dir):
    return 0.0
  start = time.perf_counter()
  done = subprocess.run(
      [sys.executable, "-m", "data.prepare", "folder", f"--videos={videos}",
       f"--name={name}", f"--data_dir={data_dir}",
       f"--short_side={short_side}"],
      capture_output=True, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if done.returncode:
    raise SystemExit(f"Preparing {name} failed:\n{done.stderr[-3000:]}")
  return time.perf_counter() - start


def stored_stats(source: Source) -> dict:
  """Frames, frame shape and mean JPEG bytes per frame of every record."""
  sizes, shape = [], None
  for i in range(source.num_examples):
    encoded, _ = source.encoded(i)
    sizes += [len(jpeg) for jpeg in encoded]
    if shape is None:
      shape = tf.image.extract_jpeg_shape(encoded[0]).numpy()[:2].tolist()
  return dict(frames=len(sizes), frame_hw=shape,
              jpeg_kb=float(np.mean(sizes)) / 1024)


# -- Images ----------------------------------------------------------------------


class BenchImages(tfds.core.GeneratorBasedBuilder):
  """ImageNet-sized JPEGs stored as they are (as TFDS imagenet2012 stores
  them): 500x375 landscape and 375x500 portrait, quality 90."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=data_features.image_features(
            [f"class{i}" for i in range(NUM_CLASSES)]))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(NUM_IMAGES):
      rng = np.random.default_rng(1000 + i)
      height, width = (375, 500) if i % 4 else (500, 375)
      image = 128 + 40 * pink_texture(rng, height, width)
      image += rng.standard_normal(image.shape, dtype=np.float32) * 2
      buffer = io.BytesIO()
      Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
          buffer, format="JPEG", quality=90)
      yield i, {"image": buffer.getvalue(), "label": i % NUM_CLASSES,
                "id": f"image{i}"}


# -- Measurement ---------------------------------------------------------------


def train_iterator(source: Source, prep: Preprocessing, batch: int,
                   threads: int) -> TrainIterator:
  return TrainIterator([source], prep, flips=[True], global_batch=batch,
                       threads=threads)


def measure(stream, batch: int, seconds: float, rounds: int,
            warmup_seconds: float) -> dict:
  """Clips per wall second and per CPU second (all threads of the process):
  medians over rounds of at least `seconds` and two batches each."""
  def run(min_seconds):
    wall, cpu = time.perf_counter(), time.process_time()
    clips = 0
    while clips < 2 * batch or time.perf_counter() - wall < min_seconds:
      next(stream)
      clips += batch
    return (clips, time.perf_counter() - wall, time.process_time() - cpu)

  try:
    run(warmup_seconds)  # tracing, autotuning, buffers and caches filling
    samples = [run(seconds) for _ in range(rounds)]
  finally:
    stream.close()
  return dict(
      clips_per_second=statistics.median(c / w for c, w, _ in samples),
      clips_per_cpu_second=statistics.median(c / u for c, _, u in samples),
      cores_busy=statistics.median(u / w for _, w, u in samples),
      clips=sum(c for c, _, _ in samples))


def read_seconds(source: Source, prep: Preprocessing, batch: int,
                 repeats: int = 200) -> float:
  """CPU seconds of one `Source.read` of a batch (the Python part of the
  pipeline, which holds the interpreter lock)."""
  rng = np.random.default_rng(0)
  counts = source.frame_counts()
  num_frames = prep.frames_of(source)
  start = time.process_time()
  for _ in range(repeats):
    records = rng.integers(source.num_examples, size=batch)
    indices = np.sort(rng.integers(counts[records, None],
                                   size=(batch, num_frames)), axis=1)
    source.read(records, indices)
  return (time.process_time() - start) / repeats


def measure_setting(setting: Setting, source: Source, args) -> list[dict]:
  """TrainIterator on one setting: one tf.data thread, one per core, and
  with RandAugment if asked; rows of the table."""
  runs = [(1, "")]
  if args.randaugment:
    runs.append((1, args.randaugment))
  if os.cpu_count() > 1:
    runs.append((os.cpu_count(), ""))
  rows = []
  for threads, augment in runs:
    stream = train_iterator(source, setting.preprocessing(augment),
                            args.batch, threads)
    row = dict(setting=setting.name, threads=threads, randaugment=augment)
    row.update(measure(stream, args.batch, args.seconds, args.rounds,
                       args.warmup_seconds))
    print(f"  {format_row(row)}", flush=True)
    rows.append(row)
  seconds = read_seconds(source, setting.preprocessing(), args.batch)
  print(f"  {setting.name}: Source.read of a batch of {args.batch}: "
        f"{seconds * 1e3:.2f} CPU ms (the Python share of the pipeline)",
        flush=True)
  for row in rows:
    row["python_read_ms_per_batch"] = seconds * 1e3
  return rows


# -- Accelerators --------------------------------------------------------------


def accelerator_rows(setting: Setting, per_core: float, mfu: float):
  """Clips/s a chip trains on at `mfu`, and the cores that feed it."""
  rows = []
  for model_name in MODELS:
    model = create({"kinetics400": 400}, model_name,
                   num_frames=setting.num_frames, image_size=setting.crop_size)
    step_flops = flops.train_step_flops(model)  # per clip
    for chip, (peak, host_cores) in ACCELERATORS.items():
      clips = mfu * peak / step_flops
      rows.append(dict(setting=setting.name, model=model_name, chip=chip,
                       train_tflop_per_clip=step_flops / 1e12,
                       clips_per_second=clips,
                       cores_needed=clips / per_core,
                       host_cores_per_chip=host_cores))
  return rows


# -- Output --------------------------------------------------------------------


def format_row(r: dict) -> str:
  augment = f"+{r['randaugment']}" if r["randaugment"] else ""
  return (f"{r['setting']:8s} TrainIterator{augment:22s} "
          f"threads {r['threads']}  {r['clips_per_second']:6.2f} clips/s  "
          f"{r['clips_per_cpu_second']:6.2f} clips/s/core  "
          f"{1e3 / r['clips_per_cpu_second']:6.1f} CPU ms/clip  "
          f"(cores busy {r['cores_busy']:.2f}, {r['clips']} clips)")


def rate(rows, setting, threads=1, randaugment="") -> float | None:
  row = next((r for r in rows if (r["setting"], r["threads"],
                                  r["randaugment"]) ==
              (setting, threads, randaugment)), None)
  return row and row["clips_per_cpu_second"]


def print_pipelines(rows: list[dict]):
  threads = os.cpu_count()
  print("\nclips/s/core (clips per CPU second of the process) of "
        "TrainIterator:")
  for setting in SETTINGS:
    one, many = rate(rows, setting.name), rate(rows, setting.name, threads)
    print(f"  {setting.name}: one tf.data thread {one:.2f}"
          + (f", {threads} threads {many:.2f}" if many else ""))


def print_randaugment(rows: list[dict], randaugment: str):
  """TrainIterator's clips per CPU second with RandAugment and without."""
  print(f"\nRandAugment {randaugment!r} (config.input.randaugment): "
        f"TrainIterator, one tf.data thread, clips/s/core without -> with:")
  for setting in SETTINGS:
    plain = rate(rows, setting.name)
    augmented = rate(rows, setting.name, randaugment=randaugment)
    print(f"  {setting.name}: {plain:.2f} -> {augmented:.2f} "
          f"({augmented / plain:.2f}x; +{1e3 / augmented - 1e3 / plain:.1f} "
          f"CPU ms/clip)")


def print_accelerators(rows: list[dict], mfu: float):
  peaks = ", ".join(f"{chip} {peak / 1e12:.0f}"
                    for chip, (peak, _) in ACCELERATORS.items())
  print(f"\nAccelerators training at an assumed MFU of {mfu:.0%} of the dense "
        f"bf16 peak ({peaks} TFLOP/s);\n"
        f"  FLOPs per clip = 3 x analytic forward FLOPs "
        f"(cover_jax.models.flops); cores needed = the clips/s it trains on /\n"
        f"  clips/s/core measured here (TrainIterator, one thread); "
        f"host cores per chip of a DGX H100 (112 / 8)\n  and a TPU v4 VM "
        f"(120 / 4); images are clips of one frame:")
  for r in rows:
    print(f"  {r['setting']:8s} {r['model']} {r['chip']:7s} "
          f"{r['train_tflop_per_clip']:6.2f} TFLOP/clip  "
          f"{r['clips_per_second']:6.1f} clips/s  needs "
          f"{r['cores_needed']:5.1f} cores  (host has "
          f"{r['host_cores_per_chip']:.0f})")


def print_cpu_training(rows: list[dict]):
  """The share of a core that feeds the CPU training step at 8x224."""
  ours = next(r for r in rows if r["setting"] == "8x224"
              and r["threads"] == 1 and not r["randaugment"])
  clips = CPU_STEP["batch"] / CPU_STEP["step_seconds"]
  print(f"\nCPU training: the {CPU_STEP['config']} step of "
        f"benchmarks/train_step.py (batch {CPU_STEP['batch']}, "
        f"{CPU_STEP['step_seconds']:.2f} s in RESULTS.md) trains on "
        f"{clips:.2f} clips/s: {clips / ours['clips_per_cpu_second']:.1%} "
        f"of one core of input pipeline.")


def machine() -> str:
  model = allocator.cpu_model()
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return (f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB; "
          f"tensorflow {tf.__version__}")


def dataset_of(setting: Setting, videos: str, tag: str, data_dir: str):
  """(source, stats) of the setting's prepared dataset, prepared if needed."""
  if setting.short_side is None:
    builder = BenchImages(data_dir=data_dir,
                          file_format=data_features.FILE_FORMAT)
    start = time.perf_counter()
    fresh = not builder.is_prepared()
    builder.download_and_prepare()
    seconds = time.perf_counter() - start if fresh else 0.0
    dataset = builder.name
  else:
    name = f"bench{tag}_short{setting.short_side}"
    seconds = prepare(videos, name, data_dir, setting.short_side)
    dataset = f"video_folder/{name}"
  source = open_source(dataset, "train", data_dir=data_dir)
  stats = stored_stats(source)
  stats.update(dataset=source.dataset, prepare_seconds=seconds,
               prepare_frames_per_second=(stats["frames"] / seconds
                                          if seconds else None))
  rate = (f"prepared at {stats['prepare_frames_per_second']:.0f} frames/s "
          f"({os.cpu_count()} decode workers, process start included)"
          if seconds else "reused")
  print(f"{setting.name}: {source.dataset}: {stats['frames']} frames of "
        f"{stats['frame_hw'][0]}x{stats['frame_hw'][1]}, mean JPEG "
        f"{stats['jpeg_kb']:.1f} KB/frame; {rate}", flush=True)
  return source, stats


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_videos", type=int, default=24)
  parser.add_argument("--video_seconds", type=float, default=10.0,
                      help="length of each source video")
  parser.add_argument("--data_dir", default=os.path.join(
      tempfile.gettempdir(), "cover_jax_input_pipeline"),
                      help="videos and prepared datasets; reused if there")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seconds", type=float, default=5.0,
                      help="minimum length of a timed round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--warmup_seconds", type=float, default=3.0)
  parser.add_argument("--mfu", type=float, default=0.4,
                      help="assumed MFU of training on an accelerator")
  parser.add_argument("--quick", action="store_true",
                      help="a smoke check: 4 videos of 4 s, batch 4, one "
                           "round of 1 s")
  parser.add_argument("--json", default=None, help="also write figures here")
  parser.add_argument("--randaugment", default="",
                      help="also measure TrainIterator with this "
                           "config.input.randaugment, e.g. rand-m9-n2")
  parser.add_argument("--retain_freed_host_memory", action="store_true",
                      help="apply cover_jax.runtime.allocator.retain_freed_host_memory() "
                           "first (no mmap for large blocks)")
  args = parser.parse_args()
  if args.randaugment:
    randaugment.parse(args.randaugment)  # a bad string fails now, not later
  if args.retain_freed_host_memory and not allocator.retain_freed_host_memory():
    raise SystemExit("retain_freed_host_memory: no glibc mallopt here.")
  if args.quick:
    args.num_videos, args.video_seconds, args.batch = 4, 4.0, 4
    args.seconds, args.rounds, args.warmup_seconds = 1.0, 1, 1.0
  tf.config.set_visible_devices([], "GPU")
  # Deprecation notices from tfds and map_fn would bury the figures.
  tf.get_logger().setLevel(logging.ERROR)
  logging.getLogger("absl").setLevel(logging.ERROR)
  start = time.perf_counter()
  results = dict(machine=machine(), args=vars(args), datasets=[],
                 pipelines=[], accelerators=[])
  print(f"machine: {results['machine']}; allocator: "
        + ("retain_freed_host_memory" if args.retain_freed_host_memory
           else "glibc's default"))

  tag = f"{args.num_videos}x{args.video_seconds:g}s".replace(".", "p")
  videos = os.path.join(args.data_dir, f"videos_{tag}")
  made = make_videos(videos, args.num_videos, args.video_seconds)
  print(f"source videos: {args.num_videos} x {args.video_seconds:g} s, "
        f"{WIDTH}x{HEIGHT}, {FPS} fps, H.264 in {videos} "
        + (f"(written in {made:.0f} s)" if made else "(reused)"))
  for setting in SETTINGS:
    source, stats = dataset_of(setting, videos, tag, args.data_dir)
    results["datasets"].append(stats)
    rows = measure_setting(setting, source, args)
    results["pipelines"] += rows
    results["accelerators"] += accelerator_rows(
        setting, rate(rows, setting.name), args.mfu)

  print_pipelines(results["pipelines"])
  if args.randaugment:
    print_randaugment(results["pipelines"], args.randaugment)
  print_accelerators(results["accelerators"], args.mfu)
  print_cpu_training(results["pipelines"])
  results["total_seconds"] = time.perf_counter() - start
  print(f"\ntotal: {results['total_seconds']:.0f} s")
  print(json.dumps(results))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
