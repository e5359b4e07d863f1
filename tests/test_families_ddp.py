"""DDP on one small model of each new family: two gloo CPU processes, no unused parameters, k_n in sync."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_ddp import _free_port, train_ddp

# name -> create_model kwargs (32x32 inputs, as train_ddp feeds)
MODELS = {
    'lm_test_vit': dict(img_size=32),
    'lm_test_convnext': {},
    'lm_swin_tiny_patch4_window7_224': dict(img_size=32, window_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 2)),
    'lm_mobilenetv3_small_050': {},
    'lm_efficientnet_b0': {},
    'lm_regnetx_002': {},
}


def _create(name: str):
    import timm
    torch.manual_seed(0)  # the same initial weights on both ranks (DDP also broadcasts them)
    return timm.create_model(name, num_classes=10, drop_path_rate=0.1, **MODELS[name])


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import timm_lm  # noqa: F401  (registers the LM models in the spawned process)

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    for name in MODELS:
        model = _create(name)
        model.set_grad_checkpointing(rank == 1)  # the checkpointed and the plain path agree, even across ranks
        train_ddp(model, rank)
        torch.save({n: p.detach() for n, p in model.named_parameters()}, os.path.join(out_dir, f'{name}-{rank}.pt'))
    dist.destroy_process_group()


def test_ddp_two_processes_every_new_family(tmp_path):
    import timm_lm  # noqa: F401
    initial = {name: dict(_create(name).named_parameters()) for name in MODELS}
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for name in MODELS:
        p0, p1 = (torch.load(tmp_path / f'{name}-{r}.pt', weights_only=True) for r in range(2))
        assert p0.keys() == p1.keys() and any('.lm.' in n for n in p0), name
        for n in p0:
            torch.testing.assert_close(p0[n], p1[n], rtol=0, atol=0, msg=f'{name}: {n}')  # in sync, k_n included
        trained = [n for n in p0 if '.lm.' in n and not torch.equal(p0[n], initial[name][n].detach())]
        assert trained == [n for n in p0 if '.lm.' in n], f'{name}: coefficients that did not train'
