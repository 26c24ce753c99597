"""Ahead-of-time plan: will a config's training step fit a TPU slice, how fast?

    python main.py --mode=plan --config=configs/cover_l16_jft.py \
        --workdir=/tmp/plan --topology=v5p:4x4x4 [--plan_search]

The config's real step (train.make_train_step: every dataset's part and
head, the optimizer, accumulation, dtype, remat, the config's mesh and
sharding rules, the global batch) is lowered with abstract inputs and
compiled for the topology (jax.experimental.topologies; libtpu compiles for
TPUs from any host). The compiler's memory_analysis gives the bytes per chip,
its cost_analysis the FLOPs and its own step-time estimate (`optimal_seconds`),
from which a modelled MFU and the run's days follow. These are the compiler's
estimates, not measurements. A compile that runs out of memory is the
answer "does not fit", with the compiler's figures. Without libtpu, the same
plan for fake CPU devices reports memory and FLOPs only.

No data is read. The split of the batch into video and image parts follows
the data pipeline's rule (input.mixture_split) with each dataset weighted by
its sample_weight, else its published training size (configs/datasets.py),
else 1 (then the plan says so); config.input.video_share overrides as in
training. Epoch length uses the same sizes.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict
import numpy as np

from cover_jax import input as inp
from cover_jax import sharding
from cover_jax.models import flops
from cover_jax.models import timesformer
from cover_jax.training import optimizer
from cover_jax.training import train

GiB = 1024 ** 3
# Per chip (one JAX device: v4 and v5p run their two cores as one "megacore").
HBM_BYTES = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB,
             "v6e": 32 * GiB}
PEAK_BF16_FLOPS = {"v4": 275e12, "v5e": 197e12, "v5p": 459e12,
                   "v6e": 918e12}
# device_kind as libtpu names the chips -> generation.
_DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e",
                 "TPU v5p": "v5p", "TPU v5": "v5p", "TPU v6 lite": "v6e",
                 "TPU v6e": "v6e"}
# The remat policies the search tries, from least to most recompute
# (most memory first). Not dots_saveable: it keeps every matmul output, the
# float32 attention logits too, and so takes more memory and time than no
# remat with models/attention.py's backward pass (benchmarks/RESULTS.md).
REMAT_POLICIES = (None, "dots_with_no_batch_dims_saveable", "nothing_saveable")
_TPU_HINT = ('TPU plans need libtpu: pip install -e ".[tpu]" (jax[tpu] of '
             'our jax version; no TPU needed, it compiles for TPUs on this '
             'host). Without it, plan for fake CPU devices: --topology=cpu:8'
             ' (memory only).')


# ----------------------------------------------------------------------------
# The target: devices and their chip.
# ----------------------------------------------------------------------------

def prepare_host(topology: str | None) -> None:
  """Before JAX starts: compile on this host's CPU (a TPU topology comes from
  libtpu, never from a local accelerator), with N fake devices for cpu:N."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if topology and topology.startswith("cpu:"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_"
                               "force_host_platform_device_count="
                               f"{int(topology.split(':')[1])}")


def libtpu_installed() -> bool:
  """Whether libtpu (the TPU compiler; `pip install -e ".[tpu]"`) is here."""
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(name: str | None) -> list[jax.Device]:
  """The devices of topology `name` ("v5p:4x4x4", "v5e:8x8"), or this host's
  CPU devices for None, "cpu" or "cpu:N" (N fake devices: prepare_host, or
  XLA_FLAGS=--xla_force_host_platform_device_count=N, before JAX starts)."""
  if name is None or name == "cpu" or name.startswith("cpu:"):
    devices = jax.devices("cpu")
    count = int(name.split(":")[1]) if name and ":" in name else None
    if count and len(devices) < count:
      raise ValueError(
          f"--topology={name}: JAX started with {len(devices)} CPU devices; "
          f"set XLA_FLAGS=--xla_force_host_platform_device_count={count} "
          f"before it starts.")
    return devices[:count] if count else devices
  if not libtpu_installed():
    raise RuntimeError(f"--topology={name}: {_TPU_HINT}")
  # Compiling only, no chip to share: let plans run beside each other.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  # v4 and v5p chips have two TensorCores; JAX runs them as one device
  # ("megacore"), which jax.make_mesh requires.
  megacore = ({"chip_config_name": "megacore"}
              if name.split(":")[0] in ("v4", "v5p") else {})
  try:
    topology = topologies.get_topology_desc(platform="tpu",
                                            topology_name=name, **megacore)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"--topology={name} is not a TPU topology libtpu "
                     f"knows ({type(e).__name__}: {e}); names look like "
                     f"v4:2x2x4, v5p:4x4x4, v5e:8x8, v6e:4x4.") from e
  return list(topology.devices)


def chip(devices: Sequence[jax.Device]) -> dict:
  """Generation, HBM bytes and bf16 peak FLOP/s of the devices' chip (None
  for CPU). HBM comes from the device where it reports it, else the table."""
  device = devices[0]
  if device.platform == "cpu":
    return dict(kind="cpu", generation=None, hbm_bytes=None, peak_flops=None,
                hbm_source=None)
  kind = device.device_kind
  generation = next((g for k, g in sorted(_DEVICE_KINDS.items(),
                                          key=lambda kv: -len(kv[0]))
                     if kind.startswith(k)), None)
  hbm, source = HBM_BYTES.get(generation), "table"
  try:  # topology devices have no runtime: usually absent
    reported = (device.memory_stats() or {}).get("bytes_limit")
  except Exception:  # pylint: disable=broad-except
    reported = None
  if reported:
    hbm, source = int(reported), "device"
  return dict(kind=kind, generation=generation, hbm_bytes=hbm,
              peak_flops=PEAK_BF16_FLOPS.get(generation), hbm_source=source)


# ----------------------------------------------------------------------------
# The batch, from the config alone.
# ----------------------------------------------------------------------------

def _known(name: str):
  """(kind, published training size or None) of a dataset by its name."""
  from configs import datasets, mini  # pylint: disable=import-outside-toplevel
  if name in datasets.KNOWN_DATASETS:
    known = datasets.KNOWN_DATASETS[name]
    return known.kind, known.train_size
  return ("image" if name == mini.IMAGES else "video"), None


def mixture(config: ConfigDict) -> dict:
  """Per dataset (in heads order) its part and sampling weight, the size of
  an epoch, and how the weights were found."""
  names = list(config.datasets)  # ConfigDict keys: sorted, the heads' order
  kinds, weights, sizes, unknown = {}, {}, {}, []
  for name in names:
    kinds[name], sizes[name] = _known(name)
    if sizes[name] is None:
      unknown.append(name)
    weight = config.datasets[name].get("sample_weight")
    weights[name] = float(weight if weight is not None else
                          (sizes[name] or 1.0))
  rule = ("config.input.video_share" if config.input.get("video_share")
          is not None else "sample_weight, else published training sizes")
  if unknown:
    rule += f" (unknown sizes, weight 1: {', '.join(unknown)})"
  return dict(kinds=kinds, weights=weights, rule=rule,
              epoch_examples=None if unknown else sum(sizes.values()))


def batch_split(config: ConfigDict, granule: int) -> dict[str, int]:
  """Examples per part of the global batch, as the pipeline splits it."""
  mix = mixture(config)
  return inp.mixture_split(
      [mix["kinds"][n] for n in mix["weights"]], list(mix["weights"].values()),
      config.batch_size, granule=granule,
      micro_batches=inp.make.accumulation_steps(config),
      video_share=config.input.get("video_share"))


def abstract_batch(config: ConfigDict, split: dict[str, int], mesh) -> dict:
  """ShapeDtypeStructs of a training batch as inp.to_global places it (the
  pipeline's uint8 frames)."""
  size, frames = config.input.crop_size, config.input.num_frames
  batch = {}
  for part, count in split.items():
    if not count:
      continue
    t = frames if part == "video" else 1
    batch[part] = {
        "frames": jax.ShapeDtypeStruct(
            (count, t, size, size, 3), jnp.uint8,
            sharding=sharding.batch_sharding(mesh, 5)),
        "label": jax.ShapeDtypeStruct((count,), jnp.int32,
                                      sharding=sharding.batch_sharding(mesh, 1)),
        "dataset": jax.ShapeDtypeStruct(
            (count,), jnp.int32, sharding=sharding.batch_sharding(mesh, 1))}
  return batch


# ----------------------------------------------------------------------------
# Lower and compile the real step.
# ----------------------------------------------------------------------------

def _shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  return int(sum(math.prod(x.sharding.shard_shape(x.shape)) *
                 np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def lower_step(config: ConfigDict, devices: Sequence[jax.Device]):
  """(lowered step, abstract state, abstract batch, model, split, mesh)."""
  mesh = sharding.make_mesh(**config.mesh, devices=devices)
  granule = mesh.shape["data"] * mesh.shape["fsdp"]
  split = batch_split(config, granule)
  mix = mixture(config)
  heads = [train.head_of(n, mix["kinds"][n], config.datasets[n])
           for n in config.datasets]
  model = train.model_from_config(config)
  model.validate()
  steps = optimizer.steps_per_epoch(mix["epoch_examples"] or
                                    config.batch_size, config.batch_size)
  batch = abstract_batch(config, split, mesh)
  compiled = train.step_from_config(
      config, model, heads, steps, mesh,
      batch_shardings=jax.tree.map(lambda x: x.sharding, batch))
  with sharding.use(mesh):
    lowered = compiled.step.lower(compiled.abstract, batch)
  return lowered, compiled.abstract, batch, model, split, mesh


def cost_analysis(compiled) -> dict:
  """The compiler's cost analysis of `compiled` (FLOPs, bytes accessed,
  optimal_seconds, ...) as one dict, per device."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return dict(cost or {})


def memory(compiled) -> dict:
  """Bytes per device from the compiler's memory analysis; total is what the
  step holds at once: arguments + outputs not aliased to (donated)
  arguments + temporaries + code."""
  m = compiled.memory_analysis()
  fields = dict(arguments=m.argument_size_in_bytes,
                outputs=m.output_size_in_bytes,
                aliased=m.alias_size_in_bytes,
                temporaries=m.temp_size_in_bytes,
                code=m.generated_code_size_in_bytes)
  fields = {k: int(v) for k, v in fields.items()}
  fields["total"] = (fields["arguments"] + fields["outputs"] -
                     fields["aliased"] + fields["temporaries"] +
                     fields["code"])
  return fields


# libtpu's two ways of saying a program does not fit (figures binary: "15.75G"
# is v5e's 16 GiB less the runtime's reserve), and what any other compiler's
# out-of-memory error says.
_SIZE = r"([\d.]+)\s*([KMGTPE]?)i?B?"
_OOM_FIGURES = (re.compile(rf"memory required for [^(]*\({_SIZE}\) exceeds "
                           rf"available HBM \({_SIZE}\)", re.IGNORECASE),
                re.compile(rf"Used {_SIZE} of {_SIZE} hbm", re.IGNORECASE))
_OOM_MARKERS = re.compile(r"RESOURCE_EXHAUSTED|out of memory", re.IGNORECASE)


def _size(number: str, unit: str) -> int:
  return int(float(number) * 1024 ** " KMGTPE".index(unit or " "))


def out_of_memory(error: BaseException) -> dict | None:
  """The compiler's "does not fit" in `error`: its message and the bytes per
  chip it says the program needs and has (None where it gives no figure);
  None when `error` is not an out-of-memory error."""
  message = str(error)
  if not _OOM_MARKERS.search(message):
    return None
  match = next((m for m in (f.search(message) for f in _OOM_FIGURES) if m),
               None)
  required, available = ((_size(*match.groups()[:2]),
                          _size(*match.groups()[2:])) if match else
                         (None, None))
  return dict(message=message, required_bytes=required,
              available_bytes=available)


def _memory_from_oom(oom: dict, state_and_batch: int) -> dict:
  """memory()'s fields for a compile that ran out of memory: the compiler's
  figure is the program's whole need, the state and batch are known, the
  rest of the analysis is not."""
  total = oom["required_bytes"]
  return dict(arguments=None, outputs=None, aliased=None, code=None,
              temporaries=None if total is None else total - state_and_batch,
              total=total)


def compile_step(config: ConfigDict, devices: Sequence[jax.Device], *,
                 hbm_bytes: int | None = None) -> dict:
  """The plan of `config`'s training step on `devices` (see module doc).

  hbm_bytes: the memory budget per device; default the chip's HBM (none for
  CPU devices: then `fits` is None). A compile that runs out of memory is
  the answer "does not fit": `fits` False, the compiler's figures under
  `compiler_out_of_memory`, no FLOPs or time from the compiler. Other
  compile errors are raised.
  """
  target = chip(devices)
  budget = hbm_bytes or target["hbm_bytes"]
  start = time.time()
  lowered, abstract, batch, model, split, mesh = lower_step(config, devices)
  sizes = dict(parameters=_shard_bytes(abstract["params"]),
               optimizer_state=_shard_bytes(abstract["opt_state"]),
               batch=_shard_bytes(batch))
  try:
    compiled, oom = lowered.compile(), None
  except Exception as e:  # pylint: disable=broad-except
    oom = out_of_memory(e)
    if oom is None:
      raise
    compiled = None
  compile_s = time.time() - start
  mem = (_memory_from_oom(oom, sum(sizes.values())) if oom else
         memory(compiled))
  cost = {} if oom else cost_analysis(compiled)
  chips = len(devices)
  video, image = split.get("video", 0), split.get("image", 0)
  forward = (flops.forward_flops(model, batch=video) +
             flops.forward_flops(model, batch=image, num_frames=1))
  analytic = 3 * forward  # forward + backward; remat recompute not counted
  compiler_flops = float(cost.get("flops", 0.0)) * chips  # cost is per device
  raw_seconds = cost.get("optimal_seconds")
  # Negative: the compiler has no estimate (seen for v4 and v5e). Scanned
  # layers: XLA's cost analysis counts the loop body once (FLOPs ~1/depth),
  # so neither FLOPs nor time stand for the step.
  scanned = bool(config.model.get("scan_layers"))
  whole = not scanned and not oom  # the compiler's FLOPs are the step's
  seconds = (float(raw_seconds) if raw_seconds and raw_seconds > 0 and
             whole else None)
  mix = mixture(config)
  steps_per_epoch = (optimizer.steps_per_epoch(mix["epoch_examples"],
                                               config.batch_size)
                     if mix["epoch_examples"] else None)
  num_steps = (config.get("num_train_steps") or
               (train.train_steps(config, steps_per_epoch)
                if steps_per_epoch else None))
  mfu = (analytic / seconds / (target["peak_flops"] * chips)
         if seconds and target["peak_flops"] else None)
  return dict(
      topology=target["kind"], chips=chips, chip=target,
      mesh=dict(mesh.shape), settings=knobs(config, chips),
      batch=dict(global_batch=config.batch_size, split=split,
                 split_rule=mix["rule"], frames=config.input.num_frames,
                 crop=config.input.crop_size),
      bytes_per_chip=dict(**sizes, **mem),
      hbm_bytes=budget, compiler_out_of_memory=oom,
      fits=False if oom else None if budget is None else mem["total"] <= budget,
      flops=dict(compiler_per_step=compiler_flops if whole else None,
                 analytic_per_step=analytic,
                 ratio=compiler_flops / analytic if whole else None,
                 compiler_scanned_body_once=compiler_flops
                 if scanned and not oom else None),
      compiler_estimate=dict(
          step_seconds=seconds, mfu=mfu, steps=num_steps,
          days=num_steps * seconds / 86400 if num_steps and seconds else None,
          optimal_seconds=None if raw_seconds is None else float(raw_seconds),
          note="the compiler's estimate (cost_analysis optimal_seconds), "
               "not a measurement"),
      compile_seconds=compile_s)


# ----------------------------------------------------------------------------
# Search: remat, scan, mesh and accumulation, a bounded number of compiles.
# ----------------------------------------------------------------------------

def knobs(config: ConfigDict, count: int | None = None) -> dict:
  """The settings the search varies, as they are in `config` (the mesh's -1
  resolved for `count` devices)."""
  mesh = (config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  policy = config.model.get("remat_policy")
  # One name for no remat, so the search does not compile it twice.
  return dict(remat_policy=None if policy in timesformer.NO_REMAT else policy,
              scan_layers=bool(config.model.get("scan_layers", False)),
              mesh=_resolve(mesh, count) if count else mesh,
              accumulation_steps=config.optimizer.get("accumulation_steps", 1))


def _resolve(mesh: tuple[int, int, int], count: int) -> tuple[int, int, int]:
  known = math.prod(s for s in mesh if s != -1)
  return tuple(count // known if s == -1 else s for s in mesh)


def with_knobs(config: ConfigDict, settings: dict) -> ConfigDict:
  """A copy of `config` with `settings` (as `knobs` returns) applied."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.model.remat_policy = settings["remat_policy"]
    c.model.scan_layers = settings["scan_layers"]
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = settings["mesh"]
    c.optimizer.accumulation_steps = settings["accumulation_steps"]
  return c


def overrides(settings: dict, base: dict | None = None) -> str:
  """`settings` as --config.* flags (only those differing from `base`)."""
  flags_ = []
  def differs(key):
    return base is None or settings[key] != base[key]
  if differs("remat_policy"):  # a text field cannot be set back to None
    flags_.append(f"--config.model.remat_policy="
                  f"{settings['remat_policy'] or 'everything_saveable'}")
  if differs("scan_layers"):
    flags_.append(f"--config.model.scan_layers={settings['scan_layers']}")
  if differs("mesh"):
    d, f, t = settings["mesh"]
    flags_ += [f"--config.mesh.data={d}", f"--config.mesh.fsdp={f}",
               f"--config.mesh.tensor={t}"]
  if differs("accumulation_steps"):
    flags_.append(f"--config.optimizer.accumulation_steps="
                  f"{settings['accumulation_steps']}")
  return " ".join(flags_) or "(the config as it is)"


def _meshes(config: ConfigDict, count: int) -> list[tuple[int, int, int]]:
  """The config's mesh, then pure data, fsdp over up to 8 devices, tensor 2."""
  model = train.model_from_config(config)
  fsdp = max((f for f in (8, 4, 2) if count % f == 0), default=1)
  out = [knobs(config)["mesh"], (-1, 1, 1), (-1, fsdp, 1)]
  if count % 2 == 0 and model.num_heads % 2 == 0:
    out.append((-1, 1, 2))
  resolved = []
  for m in out:
    m = _resolve(m, count)
    if m not in resolved and math.prod(m) == count:
      resolved.append(m)
  return resolved


def _accumulations(config: ConfigDict, mesh: tuple[int, int, int]
                   ) -> list[int]:
  """Accumulation steps whose micro-batches keep a whole shard per part."""
  granule = mesh[0] * mesh[1]
  try:
    split = batch_split(config, granule)
  except ValueError:
    return []
  parts = [b for b in split.values() if b]
  return [a for a in (1, 2, 4, 8, 16, 32, 64)
          if all(b % (a * granule) == 0 for b in parts)]


def _distance(settings: dict, base: dict) -> int:
  return sum(settings[k] != base[k] for k in settings)


def search(config: ConfigDict, devices: Sequence[jax.Device], *,
           hbm_bytes: int | None = None, max_compiles: int = 8,
           scan_layers: bool | None = None, first_fit: bool = False,
           base_plan: dict | None = None, log=print) -> dict:
  """Plans of candidate settings; the fastest and the nearest that fit.

  Candidates, nearest to the config first: its mesh, then pure data, fsdp
  and tensor meshes; on each, the config's remat policy, then the others in
  REMAT_POLICIES order; on each, the smallest accumulation, and when that
  does not fit up to two more compiles at the accumulation the temporaries
  so far predict. Economical: at most `max_compiles` compiles besides `base_plan`;
  scan_layers True compiles one block for all (None: the config's);
  `first_fit` stops at the first candidate that fits. Fastest: the
  compiler's step time (CPU has none: the fewest compiler FLOPs); nearest:
  the fewest settings changed, then the fastest.
  """
  base = knobs(config, len(devices))
  scan = base["scan_layers"] if scan_layers is None else scan_layers
  rows = [] if base_plan is None else [base_plan]
  compiles = 0

  def evaluate(settings):
    nonlocal compiles
    known = [r for r in rows if r["settings"] == settings]
    if known or compiles >= max_compiles:
      return known[0] if known else None
    compiles += 1
    log(f"plan search: compiling {overrides(settings, base)}")
    try:
      row = compile_step(with_knobs(config, settings), devices, hbm_bytes=hbm_bytes)
    except Exception as e:  # pylint: disable=broad-except
      row = dict(settings=settings, error=f"{type(e).__name__}: {e}",
                 fits=False)
    rows.append(row)
    return row

  def fits(row):
    return bool(row and row.get("fits") and "error" not in row)

  policies = [base["remat_policy"]] + [p for p in REMAT_POLICIES
                                       if p != base["remat_policy"]]
  done = False
  for mesh in _meshes(config, len(devices)):
    accumulations = _accumulations(config, mesh)
    for policy in policies if accumulations and not done else ():
      settings = dict(remat_policy=policy, scan_layers=scan, mesh=mesh,
                      accumulation_steps=accumulations[0])
      row = evaluate(settings)
      tried = [row]
      # Too big: up to two more compiles at the accumulation predicted.
      while (len(tried) < 3 and row is not None and row["fits"] is False
             and "error" not in row):
        needed = _needed_accumulation(tried, accumulations)
        if needed is None:
          break
        row = evaluate(dict(settings, accumulation_steps=needed))
        tried.append(row)
      done = row is None or (first_fit and fits(row))
      if done:
        break
  fitting = [r for r in rows if fits(r)]

  def speed(r):  # unknown (scanned): last
    return (r["compiler_estimate"]["step_seconds"] or
            r["flops"]["compiler_per_step"] or float("inf"))
  return dict(rows=rows, base=base,
              fastest=min(fitting, key=speed, default=None),
              nearest=min(fitting, key=lambda r: (
                  _distance(r["settings"], base), speed(r)), default=None))


def _needed_accumulation(rows: list[dict], accumulations: list[int]
                         ) -> int | None:
  """The smallest accumulation predicted to fit the budget, from the rows
  compiled so far for one (mesh, remat): temporaries modelled as c + v / A
  (a micro-batch's activations shrink with A, the rest does not); with one
  row c is taken as the float32 gradient the accumulation keeps. A compile
  out of memory counts with the compiler's figures; without them, 4x."""
  last = rows[-1]
  mem, oom = last["bytes_per_chip"], last.get("compiler_out_of_memory") or {}
  budget = min((b for b in (last["hbm_bytes"], oom.get("available_bytes"))
                if b), default=None)
  done = max(r["settings"]["accumulation_steps"] for r in rows)
  if mem["temporaries"] is None or budget is None:
    return next((x for x in accumulations if x >= 4 * done), None)
  fixed = mem["total"] - mem["temporaries"]
  known = [r for r in rows if r["bytes_per_chip"]["temporaries"] is not None]
  if len(known) >= 2:
    (a1, t1), (a2, t2) = [(r["settings"]["accumulation_steps"],
                           r["bytes_per_chip"]["temporaries"])
                          for r in known[-2:]]
    v = (t1 - t2) / (1 / a1 - 1 / a2) if a1 != a2 else 0
    c = t2 - v / a2
  else:
    v, c = mem["temporaries"] * last["settings"]["accumulation_steps"], \
        mem["parameters"]
  room = budget - fixed - c
  if v <= 0 or room <= 0:
    return None
  wanted = v / room
  return next((x for x in accumulations if x >= wanted and x > done), None)


# ----------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------

def _number(x) -> str:
  return "-" if x is None else f"{x:.3f}"


def _bytes(x) -> str:
  if x is None:
    return "-"
  if x >= 1024 * GiB:
    return f"{x / 1024 / GiB:.2f} TiB"
  return f"{x / GiB:.2f} GiB" if x >= GiB / 10 else f"{x / 2**20:.1f} MiB"


def _settings_text(s: dict) -> str:
  return (f"remat {s['remat_policy'] or 'off'}, scan_layers "
          f"{s['scan_layers']}, accumulation {s['accumulation_steps']}")


def _oom_text(oom: dict) -> str:
  if oom["required_bytes"] is None:
    return ("the compiler ran out of memory and gave no figure of what the "
            f"step needs: {oom['message'].splitlines()[0][:300]}")
  return (f"the compiler ran out of memory: the step needs "
          f"{_bytes(oom['required_bytes'])}, "
          f"{_bytes(oom['available_bytes'])} HBM available")


def format_plan(p: dict) -> str:
  """The plan as the lines main.py prints."""
  b, est = p["bytes_per_chip"], p["compiler_estimate"]
  oom = p.get("compiler_out_of_memory")
  cpu = p["chip"]["generation"] is None
  lines = [
      f"Plan for {p['chips']} x {p['topology']}"
      + (" (fake CPU devices: memory and FLOPs only, no TPU compiler, no "
         "time estimate)" if cpu else "")
      + f"; mesh {p['mesh']}; {_settings_text(p['settings'])}",
      f"  batch {p['batch']['global_batch']}: {p['batch']['split']} "
      f"({p['batch']['frames']}x{p['batch']['crop']}; split by "
      f"{p['batch']['split_rule']})",
      f"  per chip: parameters {_bytes(b['parameters'])}, optimizer state "
      f"{_bytes(b['optimizer_state'])}, batch {_bytes(b['batch'])}, "
      + (_oom_text(oom) if oom else
         f"temporaries {_bytes(b['temporaries'])}; total {_bytes(b['total'])}"
         + (f" of {_bytes(p['hbm_bytes'])} HBM" if p["hbm_bytes"] else
            " (no HBM to compare: CPU)"))
      + ("" if p["fits"] is None else
         ("  -> fits" if p["fits"] else "  -> DOES NOT FIT")),
      (f"  FLOPs per step: compiler {p['flops']['compiler_per_step']:.4g}, "
       f"analytic {p['flops']['analytic_per_step']:.4g} (ratio "
       f"{p['flops']['ratio']:.3f}: above 1 is remat recompute and work the "
       f"count leaves out)" if p["flops"]["ratio"] else
       f"  FLOPs per step: analytic {p['flops']['analytic_per_step']:.4g}; "
       + ("no compiler FLOPs or time: the compile ran out of memory" if oom
          else "scan_layers: the compiler counts the scanned block once, so "
          "no compiler FLOPs or time (plan with scan_layers=False for them)"))]
  if est["step_seconds"]:
    lines.append(
        f"  compiler's estimate (not a measurement): {est['step_seconds']:.3f}"
        f" s per step, modelled MFU {est['mfu']:.3f}"
        + (f", {est['days']:.1f} days for {est['steps']} steps"
           if est["days"] else ""))
  elif not cpu and p["flops"]["ratio"]:
    lines.append(f"  no step-time estimate: the compiler gave optimal_seconds="
                 f"{est['optimal_seconds']} for this chip")
  lines.append(f"  compiled in {p['compile_seconds']:.0f} s")
  return "\n".join(lines)


def format_search(result: dict) -> str:
  """The search's table, then the fastest and nearest fitting settings."""
  base = result["base"]
  lines = [f"{'remat':<34}{'scan':>5}{'mesh':>12}{'accum':>6}"
           f"{'per chip':>11}{'fits':>6}{'s/step':>8}{'MFU':>7}"]
  for r in result["rows"]:
    s = r["settings"]
    head = (f"{str(s['remat_policy']):<34}{str(s['scan_layers'])[0]:>5}"
            f"{'x'.join(map(str, s['mesh'])):>12}"
            f"{s['accumulation_steps']:>6}")
    if "error" in r:
      lines.append(head + f"  error: {r['error'][:80]}")
      continue
    est = r["compiler_estimate"]
    total = r["bytes_per_chip"]["total"]  # None: out of memory, no figure
    lines.append(head + f"{_bytes(total) if total else 'OOM':>11}"
                 f"{str(r['fits']):>6}"
                 f"{_number(est['step_seconds']):>8}"
                 f"{_number(est['mfu']):>7}")
  for label in ("fastest", "nearest"):
    r = result[label]
    lines.append(f"{label} that fits: " +
                 (overrides(r["settings"], base) if r else
                  "none of the candidates"))
  if not result["nearest"]:  # the search keeps the batch and the slice
    lines.append("the search keeps the batch and the slice: try a smaller "
                 "--config.batch_size or a larger --topology")
  return "\n".join(lines)


def run(config: ConfigDict, devices: Sequence[jax.Device], *,
        search_all: bool = False, hbm_bytes: int | None = None,
        log=print) -> dict:
  """The plan, printed as it comes; with `search_all` the search too (8
  compiles). A plan that does not fit gets a short search (at most 4
  compiles) for the nearest settings that fit."""
  result = dict(plan=compile_step(config, devices, hbm_bytes=hbm_bytes),
                search=None)
  log(format_plan(result["plan"]))
  if search_all or result["plan"]["fits"] is False:
    result["search"] = search(
        config, devices, hbm_bytes=hbm_bytes, base_plan=result["plan"],
        log=log, max_compiles=8 if search_all else 4,
        first_fit=not search_all)
    log(format_search(result["search"]))
  return result


def to_json(obj: Any) -> Any:
  """`obj` with tuples and numpy scalars made JSON-friendly."""
  if isinstance(obj, dict):
    return {str(k): to_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_json(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  return obj
