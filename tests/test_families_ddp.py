"""DDP on a whole-block family (a tiny ViT): two gloo CPU processes, no unused parameters, k_n in sync."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_ddp import _free_port, train_ddp


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import timm
    import timm_lm  # noqa: F401  (registers the LM models in the spawned process)

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model('lm_test_vit', img_size=32, num_classes=10, drop_path_rate=0.1)
    model.set_grad_checkpointing(rank == 1)  # the checkpointed and the plain path agree, even across ranks
    train_ddp(model, rank)
    torch.save({n: p.detach() for n, p in model.named_parameters()}, os.path.join(out_dir, f'params{rank}.pt'))
    dist.destroy_process_group()


def test_ddp_two_processes_vit(tmp_path):
    import timm
    torch.manual_seed(0)
    initial = dict(timm.create_model('lm_test_vit', img_size=32, num_classes=10).named_parameters())
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    p0, p1 = (torch.load(tmp_path / f'params{r}.pt', weights_only=True) for r in range(2))
    assert p0.keys() == p1.keys() and any('.lm.' in n for n in p0)
    for n in p0:
        torch.testing.assert_close(p0[n], p1[n], rtol=0, atol=0, msg=n)  # every parameter in sync, k_n included
    assert all(not torch.equal(p0[n], initial[n].detach()) for n in p0 if '.lm.' in n)  # the coefficients did train
