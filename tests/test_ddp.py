"""DDP with two CPU processes (gloo): no unused parameters, identical k_n on both ranks after a step."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def train_ddp(model: torch.nn.Module, rank: int, steps: int = 2) -> None:
    """A few SGD steps of ``model`` (10 classes, 32 x 32 inputs) under DDP, with find_unused_parameters=False,
    on different data on each rank; every parameter must get a gradient."""
    from torch.nn.parallel import DistributedDataParallel
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    torch.manual_seed(100 + rank)  # different data on each rank
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing
        opt.step()


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import timm
    import timm_lm

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts them)
    model = timm.create_model('lm_resnet20_cifar', drop_path_rate=0.1)
    train_ddp(model, rank)
    ks = torch.stack([r.k for r in timm_lm.lm_coefficients(model)])
    torch.save(ks, os.path.join(out_dir, f'k{rank}.pt'))
    dist.destroy_process_group()


def test_ddp_two_processes(tmp_path):
    torch.manual_seed(0)
    import timm
    k_init = torch.stack([r.k for r in __import__('timm_lm').lm_coefficients(timm.create_model('lm_resnet20_cifar'))])
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    k0, k1 = (torch.load(tmp_path / f'k{r}.pt', weights_only=True) for r in range(2))
    torch.testing.assert_close(k0, k1, rtol=0, atol=0)
    assert not torch.equal(k0, k_init)  # the coefficients did train
