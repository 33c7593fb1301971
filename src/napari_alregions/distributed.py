"""Per-slide work over a slide pool on dask.distributed (SPEC §1.7; issue #7).

:func:`run_pool` maps one job (a probability map, or patch embeddings) over many slides,
on a ``dask.distributed`` cluster when given a client (``tcp://`` scheduler or a
``LocalCluster``), else in this process — the same task function either way, so the
results are identical. The model travels to the workers once (``scatter``, broadcast).
Each slide's result is written to ``out/<slide>.<job>.npy`` atomically as soon as it is
done; a rerun skips slides whose result exists for the same job parameters (a manifest
records them), so a crash or a dead worker costs only the slides in flight. Tasks are
retried (a worker that dies mid-task, a transient error).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import save_npy, write_text

__all__ = ["PoolJob", "close", "connect", "gpu_for_worker", "local_client", "pool_slides", "run_pool"]

MANIFEST = "pool_results.json"


@dataclass(frozen=True)
class PoolJob:
    """What to compute per slide: ``kind`` "predict" (class probabilities) or "embed"."""

    kind: str
    stride: int
    batch_size: int | str | None = None  # None: "auto" on a GPU, 128 on the CPU
    threads: int = 1  # torch threads per task: workers x threads should not exceed the cores
    device: str | None = None  # None: the worker's GPU when it has one, else its CPU
    compile: bool = False  # torch.compile the model (worth it on a GPU, for big pools)

    def __post_init__(self) -> None:
        if self.kind not in ("predict", "embed"):
            raise ValueError(f"kind must be 'predict' or 'embed', got {self.kind!r}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        b = self.batch_size
        if not (b is None or b == "auto" or (isinstance(b, int) and not isinstance(b, bool) and b >= 1)):
            raise ValueError(f"batch_size must be a positive int, 'auto' or None, got {b!r}")
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda[:N]' or None, got {self.device!r}")


def model_payload(model, spec) -> bytes:
    """A classifier (or an embedding encoder's classifier) as bytes: spec + weights."""
    import torch

    buf = io.BytesIO()
    torch.save({"spec": spec.to_dict(), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buf)
    return buf.getvalue()


def _load_payload(payload: bytes):
    import torch

    from .model import ModelSpec

    d = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    spec = ModelSpec.from_dict(d["spec"])
    model = spec.build()
    model.load_state_dict(d["state_dict"])
    return model.eval(), spec


def gpu_for_worker(name: object, n_gpus: int) -> int:
    """The GPU a worker uses when it sees several: LocalCluster workers are named 0, 1, ...,
    so worker i takes GPU i mod n; other names hash to a GPU (stable within a run)."""
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    try:
        index = int(name)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        index = int(hashlib.sha256(str(name).encode()).hexdigest(), 16)
    return index % n_gpus


def _worker_device():
    """This task's device when the job leaves it open: the CPU without CUDA; with several
    GPUs in view (a LocalCluster on a multi-GPU machine), one per worker, spread by name.
    Workers started one per GPU (``CUDA_VISIBLE_DEVICES``, dask-cuda) see one GPU each."""
    import torch

    from .model import pick_device

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return pick_device(None)
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not on a worker: this process's current GPU
        return pick_device(None)
    return torch.device("cuda", gpu_for_worker(name, torch.cuda.device_count()))


_MODEL_CACHE: dict[str, tuple] = {}  # payload digest -> (model, spec): one per worker process


def _cached_model(payload: bytes):
    """The payload's model, built once per process: a worker runs many slides of one pool,
    and the compiled graph and tuned batch size belong to the module object."""
    digest = hashlib.sha256(payload).hexdigest()
    if digest not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # one pool's model at a time
        _MODEL_CACHE[digest] = _load_payload(payload)
    return _MODEL_CACHE[digest]


def slide_task(path: str, payload: bytes, job: PoolJob, out: str) -> str:
    """Compute one slide's result and write it atomically; returns the output path.

    Runs on a worker (or in this process); deterministic for a given payload and job.
    """
    import torch

    from .embed import embed_slide, load_encoder
    from .model import pick_device, predict_probability_map
    from .wsi import open_slide

    torch.set_num_threads(max(1, job.threads))
    device = pick_device(job.device) if job.device is not None else _worker_device()
    model, spec = _cached_model(payload)
    # on the CPU one reader thread per task (the cores belong to the tasks' models);
    # a GPU needs several readers to be fed
    common = dict(stride=job.stride, batch_size=job.batch_size, device=device, compile=job.compile,
                  workers=max(1, job.threads) if device.type == "cpu" else None)
    with open_slide(path) as slide:
        tissue = slide.tissue_map(job.stride)
        if job.kind == "predict":
            result = predict_probability_map(slide, model, spec, tissue=tissue, **common)
        else:
            result = embed_slide(slide, load_encoder(model, spec=spec), tissue=tissue, **common)
    return str(save_npy(out, result.astype(np.float32)))


def _job_key(payload: bytes, job: PoolJob) -> str:
    h = hashlib.sha256(payload)
    h.update(json.dumps(asdict(job), sort_keys=True).encode())
    return h.hexdigest()[:16]


def slide_name(path: str | os.PathLike[str]) -> str:
    """A slide's name in pool results: its file name without the image suffix."""
    path = Path(path)
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def run_pool(
    slides: Sequence[str | os.PathLike[str]],
    model,
    spec,
    job: PoolJob,
    out: str | os.PathLike[str],
    *,
    client=None,
    retries: int = 2,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Path]:
    """Run ``job`` on every slide; results ``out/<slide>.<kind>.npy``, name -> path.

    Parameters
    ----------
    slides : sequence of paths
    model, spec
        The classifier and its ModelSpec (for "embed": its penultimate layer).
    job : PoolJob
    out : folder
        Results and the manifest that makes reruns skip finished slides.
    client : distributed.Client, optional
        Where to run; None runs the same tasks in this process.
    retries : int
        Extra attempts per slide (a worker that died, a transient error).
    progress : callable, optional
        ``progress(slide, done, total)`` as slides finish.

    Returns
    -------
    dict of slide name -> result path (every slide; skipped ones included)
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(s) for s in slides]
    names = [slide_name(p) for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("slide names must be unique within a pool")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such slide")
    payload = model_payload(model, spec)
    key = _job_key(payload, job)
    manifest_path = out / MANIFEST
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    done = {n: Path(v["file"]) for n, v in manifest.get("slides", {}).items()
            if v.get("key") == key and (out / Path(v["file"]).name).is_file()}
    results = {n: out / f.name for n, f in done.items()}
    todo = [(n, p) for n, p in zip(names, paths) if n not in results]
    total, finished = len(names), len(results)
    if progress is not None:
        for n in results:
            progress(n, finished, total)

    def record(name: str, file: str) -> None:
        nonlocal finished
        manifest.setdefault("slides", {})[name] = {"file": Path(file).name, "key": key, "job": asdict(job)}
        write_text(manifest_path, json.dumps(manifest, indent=1))
        results[name] = Path(file)
        finished += 1
        if progress is not None:
            progress(name, finished, total)

    targets = {n: str(out / f"{n}.{job.kind}.npy") for n, _ in todo}
    if client is None:
        for n, p in todo:
            for attempt in range(retries + 1):
                try:
                    file = slide_task(str(p), payload, job, targets[n])
                    break
                except Exception:
                    if attempt == retries:
                        raise
            record(n, file)
        return {n: results[n] for n in names}

    from distributed import as_completed

    # hash=False: a unique key, so a release from an earlier run cannot race this one
    shared = client.scatter(payload, broadcast=True, hash=False)
    futures = {client.submit(slide_task, str(p), shared, job, targets[n], key=f"alregions-{job.kind}-{n}-{key}",
                             retries=retries, pure=False): n for n, p in todo}
    for fut in as_completed(futures):
        record(futures[fut], fut.result())
    return {n: results[n] for n in names}


def local_client(n_workers: int, *, threads_per_worker: int = 1):
    """A ``Client`` on a new LocalCluster of processes (close it when done)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                           dashboard_address=":0")  # any free port: several clusters can coexist
    return Client(cluster)


def connect(scheduler: str | None = None, local_cluster: int = 0, *, threads_per_worker: int = 1):
    """A client for ``--scheduler tcp://host:port`` or ``--local-cluster N``; None for neither."""
    if scheduler and local_cluster:
        raise ValueError("give either a scheduler address or a local cluster size, not both")
    if scheduler:
        from distributed import Client

        return Client(scheduler)
    if local_cluster:
        if local_cluster < 1:
            raise ValueError(f"local_cluster must be >= 1 worker, got {local_cluster}")
        return local_client(local_cluster, threads_per_worker=threads_per_worker)
    return None


def close(client) -> None:
    """Close a client and, for a LocalCluster we started, the cluster."""
    if client is None:
        return
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def pool_slides(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Slide files of a pool: the images of a ``manifest.json`` folder, a folder's slides, or paths."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if (folder / "manifest.json").is_file():
            return [folder / s["image"] for s in json.loads((folder / "manifest.json").read_text())["slides"]]
        if folder.is_dir():
            return sorted(p for p in folder.iterdir()
                          if p.suffix.lower() in (".tif", ".tiff", ".svs") and not p.stem.endswith("_mask"))
        return [folder]
    return [Path(p) for p in source]
