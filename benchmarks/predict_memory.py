"""Peak memory and time of predict's decoding: a long video, large images.

Each case runs in a fresh subprocess, which prints its wall time and its
peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`), also less the RSS
it had after its imports (TensorFlow, JAX, PyAV, PIL), so that the rows say
what decoding added:

  - video, before: the whole video decoded to JPEG frames (`data.decode.
    decode_video`, as predict decoded videos until issue 20), then the
    evaluation's frames sampled from that list (`input.preprocess_eval`);
  - video, after: `predict.decode` (only the sampled frames, seeking to the
    keyframes before them), then the evaluation's views;
  - image, before: `data.decode.decode_image` of a `--image_side` square PNG;
  - image, after: `predict.decode` of it (refused over `--max_image_pixels`),
    and with the limit raised above its size;
  - four such PNGs, before: a thread pool of min(8, cores) decoding them
    (predict's pool until issue 20); after: `predict.decode_all` (its
    bounded pool), limit raised.

The inputs are written once into `--dir` and reused: a `--minutes` long
H.264 mp4 at 30 fps, 640x360 (libx264 veryfast, keyframe every 250 frames:
x264's default), a moving textured picture; the PNGs are gradients with
noise.

    python benchmarks/predict_memory.py                  # all cases
    python benchmarks/predict_memory.py --cases=video_after,image_after

Figures from earlier runs are in benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CASES = ("video_before", "video_after", "image_before", "image_after",
         "image_after_raised", "four_images_before", "four_images_after")


def write_video(path: str, minutes: float) -> None:
  import av  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  texture = rng.integers(0, 256, (720, 1280, 3), np.uint8)
  texture = (texture // 4 + np.linspace(0, 190, 1280, dtype=np.uint8)[
      None, :, None]).astype(np.uint8)
  frames = round(minutes * 60 * 30)
  with av.open(path + ".part", "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=30,
                                  options={"preset": "veryfast"})
    stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
    for i in range(frames):
      y, x = (i * 3) % 360, (i * 7) % 640
      image = np.ascontiguousarray(texture[y:y + 360, x:x + 640])
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  os.replace(path + ".part", path)


def write_png(path: str, side: int, seed: int) -> None:
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  row = np.linspace(0, 255, side, dtype=np.float32)
  image = np.empty((side, side, 3), np.uint8)
  for start in range(0, side, 1000):  # in bands: no 1 GB float temporary
    band = row[None, :] + rng.integers(0, 8, (min(1000, side - start), side))
    image[start:start + len(band)] = band.clip(0, 255).astype(
        np.uint8)[..., None]
  Image.fromarray(image).save(path + ".part", format="PNG", compress_level=1)
  os.replace(path + ".part", path)


def child(case: str, args) -> dict:
  """Runs one case in this process; its figures."""
  # pylint: disable=import-outside-toplevel
  import concurrent.futures
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  from cover_jax import input as inp
  from cover_jax.inference import predict
  from data import decode as decoding
  prep = inp.Preprocessing(num_frames=args.num_frames,
                           crop_size=args.short_side)
  video = os.path.join(args.dir, f"long_{args.minutes:g}min.mp4")
  pngs = [os.path.join(args.dir, f"large_{args.image_side}_{i}.png")
          for i in range(4)]
  baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.perf_counter()
  out = {}
  if case == "video_before":
    frames = decoding.decode_video(video, args.short_side).frames
    inp.preprocess_eval(tf.constant(frames), num_frames=args.num_frames,
                        prep=prep)
    out["frames_decoded_to_jpeg"] = len(frames)
  elif case == "video_after":
    decoded = predict.decode(video, args.short_side, args.num_frames)
    predict._views(decoded.frames, prep)  # pylint: disable=protected-access
    out["frames"] = decoded.indices
  elif case == "image_before":
    decoding.decode_image(pngs[0], args.short_side)
  elif case in ("image_after", "image_after_raised"):
    limit = (args.image_side ** 2 if case == "image_after_raised" else
             predict.MAX_IMAGE_PIXELS)
    decoded = predict.decode(pngs[0], args.short_side, 1,
                             max_image_pixels=limit)
    out["error"] = decoded.error
  elif case == "four_images_before":
    threads = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(lambda p: decoding.decode_image(p, args.short_side),
                    pngs))
    out["threads"] = threads
  elif case == "four_images_after":
    list(predict.decode_all(pngs, {"image": args.short_side},
                            {"image": 1},
                            max_image_pixels=args.image_side ** 2))
    out["threads"] = predict.DECODE_THREADS
  out["seconds"] = round(time.perf_counter() - start, 2)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  out["peak_rss_mib"] = round(peak / 1024)
  out["added_mib"] = round((peak - baseline) / 1024)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", default="/tmp/predict_memory")
  parser.add_argument("--minutes", type=float, default=10)
  parser.add_argument("--image_side", type=int, default=10000)
  parser.add_argument("--short_side", type=int, default=224)
  parser.add_argument("--num_frames", type=int, default=8)
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args.child, args)))
    return
  os.makedirs(args.dir, exist_ok=True)
  video = os.path.join(args.dir, f"long_{args.minutes:g}min.mp4")
  if not os.path.exists(video):
    print(f"writing {video}", flush=True)
    write_video(video, args.minutes)
  for i in range(4):
    png = os.path.join(args.dir, f"large_{args.image_side}_{i}.png")
    if not os.path.exists(png):
      print(f"writing {png}", flush=True)
      write_png(png, args.image_side, i)
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()}")
  print(f"video: {os.path.getsize(video) / 2**20:.0f} MiB; image "
        f"{args.image_side}x{args.image_side} PNG")
  for case in args.cases.split(","):
    proc = subprocess.run(
        [sys.executable, __file__, f"--child={case}"] +
        [a for a in sys.argv[1:] if not a.startswith("--cases")],
        capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
      print(f"{case}: failed\n{proc.stderr[-2000:]}")
      continue
    print(f"{case}: {lines[-1]}", flush=True)


if __name__ == "__main__":
  main()
