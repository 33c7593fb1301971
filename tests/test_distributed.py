"""Slide pools on dask.distributed: same maps as serial, resumable, survives a dead worker."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_alregions.distributed import PoolJob, local_client, run_pool
from napari_alregions.model import ModelSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool4(tmp_path_factory):
    from napari_alregions.synthetic import make_slide_pool

    folder = tmp_path_factory.mktemp("pool4")
    manifest = make_slide_pool(folder, n_slides=4, size=1024, seed=5)
    return [folder / s["image"] for s in manifest["slides"]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    spec = ModelSpec(patch_size=32, level=1)
    return spec.build().eval(), spec


@pytest.fixture(scope="module")
def client():
    c = local_client(2)
    yield c
    c.close()
    c.cluster.close()


def _load(results):
    return {n: np.load(p) for n, p in results.items()}


def test_local_cluster_matches_serial_and_is_deterministic(pool4, model, client, tmp_path):
    m, spec = model
    job = PoolJob("predict", stride=64)
    serial = _load(run_pool(pool4, m, spec, job, tmp_path / "serial"))
    seen = []
    dist = _load(run_pool(pool4, m, spec, job, tmp_path / "dist", client=client,
                          progress=lambda name, done, total: seen.append((name, done, total))))
    assert sorted(serial) == sorted(dist) and len(serial) == 4
    for n in serial:
        assert serial[n].shape[-1] == 2
        np.testing.assert_array_equal(dist[n], serial[n])
    assert sorted(d for _, d, _ in seen) == [1, 2, 3, 4] and {t for *_, t in seen} == {4}
    emb = _load(run_pool(pool4[:2], m, spec, PoolJob("embed", stride=64), tmp_path / "emb", client=client))
    for e in emb.values():
        ok = np.isfinite(e).all(-1)
        np.testing.assert_allclose(np.linalg.norm(e[ok], axis=-1), 1.0, atol=1e-5)


def test_rerun_skips_finished_slides(pool4, model, tmp_path):
    m, spec = model
    job = PoolJob("predict", stride=64)
    first = run_pool(pool4[:2], m, spec, job, tmp_path)
    first_maps = _load(first)
    stamps = {n: os.stat(p).st_mtime_ns for n, p in first.items()}

    class Crash(Exception):
        pass

    def crash_after_one(name, done, total):
        if done == 3:  # the third slide finished, then the run dies
            raise Crash

    with pytest.raises(Crash):
        run_pool(pool4, m, spec, job, tmp_path, progress=crash_after_one)
    redone = []
    out = run_pool(pool4, m, spec, job, tmp_path, progress=lambda n, d, t: redone.append(n))
    assert len(out) == 4
    assert {n: os.stat(first[n]).st_mtime_ns for n in first} == stamps  # never recomputed
    # another model: nothing is reused
    torch.manual_seed(1)
    other = spec.build().eval()
    again = _load(run_pool(pool4[:1], other, spec, job, tmp_path))
    name = next(iter(again))
    assert not np.array_equal(again[name], first_maps[name], equal_nan=True)


def test_dead_worker_mid_run_still_completes(pool4, model, tmp_path):
    m, spec = model
    job = PoolJob("predict", stride=64)
    serial = _load(run_pool(pool4, m, spec, job, tmp_path / "serial"))
    c = local_client(2)
    try:
        killed = []

        def kill_one(name, done, total):
            if not killed:
                import signal

                pids = c.run(os.getpid)
                addr = sorted(pids)[0]
                os.kill(pids[addr], signal.SIGKILL)  # the nanny restarts it; its tasks are retried
                killed.append(addr)

        dist = _load(run_pool(pool4, m, spec, job, tmp_path / "dist", client=c, progress=kill_one))
    finally:
        c.close()
        c.cluster.close()
    assert killed and sorted(dist) == sorted(serial)
    for n in serial:
        np.testing.assert_array_equal(dist[n], serial[n])


def test_bad_input(pool4, model, tmp_path):
    m, spec = model
    with pytest.raises(ValueError, match="kind"):
        PoolJob("classify", stride=64)
    with pytest.raises(FileNotFoundError):
        run_pool([tmp_path / "missing.tif"], m, spec, PoolJob("predict", stride=64), tmp_path)


def test_simulation_through_the_cluster_matches_in_process(tmp_path_factory, client):
    from napari_alregions.simulate import SimConfig, run_simulation
    from napari_alregions.synthetic import make_slide_pool

    folder = tmp_path_factory.mktemp("simpool")
    make_slide_pool(folder, n_slides=3, size=1024, seed=2)
    cfg = SimConfig(methods=("adaptive",), settings=((256, 1),), cycles=2, epochs=1,
                    patches_per_slide=8, full_baseline=False)
    serial = run_simulation(folder, cfg)
    address = client.scheduler.address
    dist = run_simulation(folder, SimConfig(**{**cfg.to_dict(), "scheduler": address}))
    assert dist["rows"] == serial["rows"]
    assert dist["regions"] == serial["regions"]


def test_pool_cli_runs_the_pool_and_validates_its_options(pool4, model, tmp_path, capsys):
    from napari_alregions.cli import main
    from napari_alregions.model import predict_probability_map, save_checkpoint
    from napari_alregions.wsi import open_slide

    m, spec = model
    ck = tmp_path / "model.pt"
    save_checkpoint(ck, m, spec)
    out = tmp_path / "out"
    args = ["pool", "predict", *map(str, pool4[:2]), "--checkpoint", str(ck), "--stride", "64", "--out", str(out),
            "--device", "cpu", "--batch-size", "auto"]
    assert main(args) == 0
    assert "2 slide(s) done on this process" in capsys.readouterr().out
    with open_slide(pool4[0]) as s:  # the pool's map is the plain predict map
        want = predict_probability_map(s, m, spec, stride=64, device="cpu")
    np.testing.assert_allclose(np.load(out / f"{pool4[0].name.split('.')[0]}.predict.npy"), want, atol=1e-5, equal_nan=True)
    for bad in (["--batch-size", "zero"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as exc:
            main([*args[:-2], *bad])
        assert exc.value.code == 2
        assert "positive integer or 'auto'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="device"):
        PoolJob("predict", stride=64, device="tpu")
    with pytest.raises(ValueError, match="batch_size"):
        PoolJob("predict", stride=64, batch_size="many")


def test_workers_spread_over_the_gpus_they_see(monkeypatch):
    import distributed

    from napari_alregions import distributed as dist_mod
    from napari_alregions.distributed import gpu_for_worker

    assert [gpu_for_worker(i, 4) for i in range(6)] == [0, 1, 2, 3, 0, 1]
    assert gpu_for_worker("7", 4) == 3  # LocalCluster names may arrive as strings
    named = gpu_for_worker("tcp://10.0.0.5:4242", 3)
    assert 0 <= named < 3 and gpu_for_worker("tcp://10.0.0.5:4242", 3) == named  # stable
    with pytest.raises(ValueError, match="n_gpus"):
        gpu_for_worker(0, 0)

    class Worker:
        name = 6

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(distributed, "get_worker", lambda: Worker())
    assert dist_mod._worker_device() == torch.device("cuda", 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # one GPU or none: the usual choice
    assert dist_mod._worker_device() == torch.device("cpu")
