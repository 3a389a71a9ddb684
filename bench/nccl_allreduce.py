# NCCL all-reduce bandwidth between the GPUs of this machine (torchrun --nproc_per_node N this.py):
# the ceiling for data-parallel gradient averaging. Prints one RESULT line (bus bandwidth, as
# nccl-tests defines it: 2 (n-1)/n x bytes / time).
import json, os, time
import torch
import torch.distributed as dist

dist.init_process_group("nccl")
rank, n = dist.get_rank(), dist.get_world_size()
torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
for mb in (32, 256, 1024):
    x = torch.randn(mb * 2**20 // 4, device="cuda")
    for _ in range(5):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    iters = 20
    t = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / iters
    if rank == 0:
        busbw = 2 * (n - 1) / n * x.numel() * 4 / dt / 1e9
        print("RESULT " + json.dumps({"kind": "nccl_allreduce", "ranks": n, "mb": mb, "ms": dt * 1e3, "busbw_GBps": busbw}), flush=True)
dist.destroy_process_group()
