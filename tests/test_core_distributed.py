"""fo_plugin.core.distributed: shards, gathers and one-process-equal training steps, with 2 real gloo processes
(torch.multiprocessing) compared against the same computation in this process."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fo_plugin.core import distributed
from fo_plugin.core.ntxent import nt_xent

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, tmp_path, *args) -> list:
    """Run ``fn(rank, out_file, *args)`` in WORLD gloo processes; each saves its result; returns them by rank."""
    port = _free_port()
    mp.spawn(_entry, args=(fn, str(tmp_path), port, args), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _entry(rank: int, fn, folder: str, port: int, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = distributed.init("gloo")
    assert ctx == distributed.Context(rank, WORLD, rank, True)
    try:
        torch.save(fn(rank, *args), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_shard_is_a_contiguous_partition():
    for n in (0, 1, 2, 7, 48, 1001):
        for world in (1, 2, 3, 8):
            parts = [distributed.shard(n, r, world) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert distributed.shard(7, 0, 2) == range(0, 4) and distributed.shard(7, 1, 2) == range(4, 7)


def test_single_process_is_the_identity():
    x = np.arange(6.0).reshape(3, 2)
    assert distributed.context() == distributed.Context()
    assert distributed.gather_rows(x) is x
    assert distributed.gather_list(["a", None]) == ["a", None]
    assert distributed.broadcast({"k": 1}) == {"k": 1}
    assert distributed.shard(5) == range(5)


def _collectives(rank: int) -> dict:
    n = 7  # rows 0..3 on rank 0, 4..6 on rank 1
    mine = distributed.shard(n)
    full = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    views = torch.arange(2 * n * 4, dtype=torch.float64).reshape(2, n, 4)  # (V, N, D): gathered along dim 1
    return {"rows": distributed.gather_rows(full[mine.start:mine.stop]),
            "dim1": distributed.gather_rows(views[:, mine.start:mine.stop], dim=1),
            "bool": distributed.gather_rows(np.arange(n)[mine.start:mine.stop] % 3 == 0),
            "empty": distributed.gather_rows(torch.ones(3 if rank == 0 else 0)),
            "list": distributed.gather_list([f"r{rank}-{i}" for i in mine]),
            "sum": distributed.all_reduce_sum(torch.tensor([rank + 1.0, 10.0])),
            "bcast": distributed.broadcast({"rank": rank}),
            "primary": distributed.is_primary()}


def test_collectives_rebuild_the_full_arrays_in_order(spawned):
    for r, res in enumerate(r["collectives"] for r in spawned):
        np.testing.assert_array_equal(res["rows"], np.arange(21, dtype=np.float32).reshape(7, 3))
        assert isinstance(res["rows"], np.ndarray) and res["rows"].dtype == np.float32
        assert torch.equal(res["dim1"], torch.arange(56, dtype=torch.float64).reshape(2, 7, 4))
        np.testing.assert_array_equal(res["bool"], np.arange(7) % 3 == 0)
        assert torch.equal(res["empty"], torch.ones(3))
        assert res["list"] == ["r0-0", "r0-1", "r0-2", "r0-3", "r1-4", "r1-5", "r1-6"]
        assert res["sum"].tolist() == [3.0, 20.0]
        assert res["bcast"] == {"rank": 0}
        assert res["primary"] == (r == 0)


def _images() -> np.ndarray:
    return (np.random.default_rng(0).random((20, 16, 16, 3)) * 255).astype(np.uint8)  # 2 batches of 8 per epoch


def _all(rank: int) -> dict:
    return {"collectives": _collectives(rank), "step": _step(_model(), *_batch()), "train": _train(rank, _images())}


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> list[dict]:
    """Every distributed computation of this file, in one pair of gloo processes (starting them is the cost)."""
    return _spawn(_all, tmp_path_factory.mktemp("dist"))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 8, bias=False), nn.BatchNorm1d(8, affine=False))


def _step(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> tuple[float, dict, dict]:
    """One SimCLR step on this rank's slice of the global batch: loss, summed gradients, BN running stats."""
    mine = distributed.shard(len(x1))
    model = distributed.sync_batchnorm(model).train()
    z1 = distributed.gather_with_grad(model(x1[mine.start:mine.stop]))
    z2 = distributed.gather_with_grad(model(x2[mine.start:mine.stop]))
    loss = nt_xent(z1, z2)
    loss.backward()
    distributed.all_reduce_grads(model)
    return (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()})


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(10, 3, 8, 8, generator=g), torch.rand(10, 3, 8, 8, generator=g)  # 5 + 5 rows per rank


def test_two_ranks_take_the_one_process_training_step(spawned):
    """Global-batch negatives, global batch norm and summed gradients: the 2-rank step is the 1-process step."""
    loss, grads, bufs = _step(_model(), *_batch())
    for r_loss, r_grads, r_bufs in (r["step"] for r in spawned):
        assert r_loss == pytest.approx(loss, rel=1e-6)
        for n, g in grads.items():
            torch.testing.assert_close(r_grads[n], g, rtol=1e-4, atol=1e-6)
        for n, b in bufs.items():
            torch.testing.assert_close(r_bufs[n], b, rtol=1e-5, atol=1e-6)
    assert any(g.abs().max() > 1e-3 for g in grads.values())  # a real gradient was compared


def _train(rank: int, images: np.ndarray):
    from fo_plugin.core.models import ProxyConfig
    from fo_plugin.core.train import TrainConfig, train_proxy

    model, history = train_proxy(images, torch.arange(len(images)), TrainConfig(epochs=2, batch_size=8),
                                 torch.device("cpu"), ProxyConfig(width=4, image_size=16))
    return model.state_dict(), history


def test_two_ranks_train_the_one_process_proxy(spawned):
    state, history = _train(0, _images())
    for r_state, r_history in (r["train"] for r in spawned):
        assert [h["loss"] for h in r_history] == pytest.approx([h["loss"] for h in history], rel=1e-5)
        for n, v in state.items():
            torch.testing.assert_close(r_state[n].float(), v.float(), rtol=1e-4, atol=1e-5)
