#!/usr/bin/env python3
"""The reference for bench_gpu: the same models in plain PyTorch, timed the same way.

    python3 bench/reference.py --batch B [--steps 10]   # prints RESULT {json} lines
    python3 bench/reference.py --table cpp.jsonl py.jsonl  # the markdown table of both

Models (the shapes of LinearNexus's presets, same maths):
  gpt-small    12 x [RMSNorm -> fused qkv (no bias) -> RoPE (neox halves) -> F.scaled_dot_product_attention
               (causal) -> proj; RMSNorm -> gelu(tanh) MLP 4C], final RMSNorm, LM head tied to the embedding.
  mamba-small  24 x Mamba-1 [RMSNorm -> in_proj -> causal depthwise conv (4) -> silu -> x_proj -> softplus
               dt_proj -> selective scan -> + D u -> * silu(z) -> out_proj], the scan chunked exactly as
               plugins/mamba/mamba.cpp (Q-step recurrence per chunk, state carried, hand-written backward
               that recomputes a chunk at a time).
  nanogpt      Karpathy's nanoGPT GPT-2 124M as its train.py runs it, the fastest plain PyTorch a user
               would train this size with: LayerNorm (bias), learned positions, GELU MLP 4C with biases,
               SDPA (causal), LM head tied to the embedding, vocabulary padded to 50304 (nanoGPT's
               default; targets stay < 50257), the loss inside forward so torch.compile fuses it too,
               AdamW(fused=True) with nanoGPT's decay groups.
  nanogpt-char the same with nanoGPT's shakespeare_char vocabulary (65 tokens, unpadded), the peer of
               bench_gpu's gpt-small-char.
Training: bf16 autocast on fp32 weights, fp32 loss, clip 1.0, torch.optim.AdamW(fused=True), the step
timed as a whole (no sync inside). GPT runs eager and torch.compile'd; Mamba eager (its Python loop
over time steps is what compile would unroll). Decoding: 128-token prompt, 512 greedy tokens on a KV
cache / the recurrent state under autocast, eager and as gpt-fast does it (decode_compiled: static
caches, the step compiled with mode="reduce-overhead", i.e. CUDA graphs). --decode-only: just the
latter, gpt-small at B = 1, 16, 64 and mamba-small at B = 1, 16.

Why `gpt-small` compiled is much slower than `nanogpt` compiled (measured 2026-11-30: 338K vs 502K
tokens/s, 68.5 vs 40.7 GiB): torch.compile there wraps the model only up to the logits; the loss
(`logits.float()` -> cross_entropy) runs eagerly outside the graph, so the [B*T, 50257] logits are
materialised in bf16, copied to fp32 (13 GB at B=64), log-softmaxed and back-propagated through
eager kernels: the same ~60 ms of the step our own breakdown showed. nanoGPT returns the loss from the
compiled forward, and Inductor fuses the upcast, log-sum-exp and its gradient into the matmuls'
neighbours. The RMSNorm `x.float()` casts and RoPE's slices + cat cost a little more on top.
"""
import argparse
import json
import math
import sys
import time

V, T = 50257, 1024


def result(**kv):
    print("RESULT " + json.dumps(kv), flush=True)


# ---- models ------------------------------------------------------------------------------------
def build(torch):
    nn, F = torch.nn, torch.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, d, eps=1e-5):
            super().__init__()
            self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

        def forward(self, x):  # [..., C], in fp32 as LinearNexus does
            return F.rms_norm(x.float(), (x.size(-1),), self.weight.float(), self.eps).to(x.dtype)

    def rope(x, pos, base=10000.0):  # x [B, H, T, D], pos [T] or [B, T]
        D = x.size(-1)
        inv = base ** (-torch.arange(0, D // 2, device=x.device, dtype=torch.float32) * (2.0 / D))
        ang = pos.float()[..., None] * inv
        cos, sin = ang.cos(), ang.sin()
        if cos.dim() == 2:
            cos, sin = cos[None, None], sin[None, None]
        else:
            cos, sin = cos[:, None], sin[:, None]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # the rotation in x's dtype, as LinearNexus does
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    class Attn(nn.Module):
        def __init__(self, C, H, L):
            super().__init__()
            self.H, self.D = H, C // H
            self.ln1, self.ln2 = RMSNorm(C), RMSNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C, bias=False), nn.Linear(C, C, bias=False)
            self.up, self.down = nn.Linear(C, 4 * C, bias=False), nn.Linear(4 * C, C, bias=False)
            for m in (self.qkv, self.up):
                nn.init.normal_(m.weight, 0, 0.02)
            for m in (self.proj, self.down):
                nn.init.normal_(m.weight, 0, 0.02 / math.sqrt(2 * L))

        def forward(self, x, cache=None, start=0):  # x [B, T, C]; start: an int, or [1] tensor (static)
            B, t, C = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(B, t, 3, self.H, self.D).permute(2, 0, 3, 1, 4)  # [B, H, t, D]
            if torch.is_tensor(start):  # gpt-fast: write at `start`, attend over the whole static cache
                q, k = rope(q, start), rope(k, start)
                cache[0].index_copy_(2, start, k.to(cache[0].dtype))
                cache[1].index_copy_(2, start, v.to(cache[1].dtype))
                mask = torch.arange(cache[0].size(2), device=x.device) <= start
                y = F.scaled_dot_product_attention(q, cache[0], cache[1], attn_mask=mask)
                h = x + self.proj(y.transpose(1, 2).reshape(B, t, C))
                return h + self.down(F.gelu(self.up(self.ln2(h)), approximate="tanh"))
            pos = torch.arange(start, start + t, device=x.device)
            q, k = rope(q, pos), rope(k, pos)
            if cache is not None:
                cache[0][:, :, start:start + t] = k
                cache[1][:, :, start:start + t] = v
                k, v = cache[0][:, :, :start + t], cache[1][:, :, :start + t]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None or t > 1)
            h = x + self.proj(y.transpose(1, 2).reshape(B, t, C))
            return h + self.down(F.gelu(self.up(self.ln2(h)), approximate="tanh"))

    class ChunkScan(torch.autograd.Function):
        """u, delta [B,T,D]; A [D,N]; Bm, Cm [B,T,N]; s0 [B,D,N] -> y [B,T,D], state [B,D,N]."""

        @staticmethod
        def scan_in_chunk(la, b, h0, reverse):  # [B, Q, F] each, h0 [B, F]
            Q = la.size(1)
            a = la.exp()
            h, S = torch.empty_like(b), torch.empty_like(b)
            first, step = (Q - 1, -1) if reverse else (0, 1)
            h[:, first], S[:, first] = b[:, first], la[:, first]
            q = first + step
            while 0 <= q < Q:
                torch.addcmul(b[:, q], a[:, q], h[:, q - step], out=h[:, q])
                torch.add(S[:, q - step], la[:, q], out=S[:, q])
                q += step
            return h.addcmul_(S.exp_(), h0[:, None])

        @staticmethod
        def chunk(u, delta, At, Bm, s):
            B, Q = u.shape[:2]
            N, D = At.shape
            la = delta[:, :, None] * At
            b = Bm[..., None] * (delta * u)[:, :, None]
            h = ChunkScan.scan_in_chunk(la.view(B, Q, N * D), b.view(B, Q, N * D), s.reshape(B, N * D), False)
            return la, b, h.view(B, Q, N, D)

        @staticmethod
        def forward(ctx, u, delta, A, Bm, Cm, s0, Q):
            At = A.t().contiguous()
            s = s0.transpose(1, 2).contiguous()
            ys, entering = [], []
            for t0 in range(0, u.size(1), Q):
                n = min(Q, u.size(1) - t0)
                entering.append(s)
                h = ChunkScan.chunk(u[:, t0:t0 + n], delta[:, t0:t0 + n], At, Bm[:, t0:t0 + n], s)[2]
                ys.append((h * Cm[:, t0:t0 + n, :, None]).sum(2))
                s = h[:, n - 1].contiguous()
            ctx.save_for_backward(u, delta, At, Bm, Cm, torch.stack(entering))
            ctx.Q = Q
            return torch.cat(ys, 1), s.transpose(1, 2).contiguous()

        @staticmethod
        def backward(ctx, gy_all, gstate):
            u, delta, At, Bm, Cm, entering = ctx.saved_tensors
            Q, (B, T), (N, D) = ctx.Q, u.shape[:2], At.shape
            gy_all = gy_all if gy_all is not None else torch.zeros_like(u)
            gs = gstate.transpose(1, 2).contiguous() if gstate is not None else u.new_zeros(B, N, D)
            gu, gd, gB, gC, gAt = [], [], [], [], torch.zeros_like(At)
            for c in range(entering.size(0) - 1, -1, -1):
                t0 = c * Q
                n = min(Q, T - t0)
                uc, dc, Bc, Cc, gy = (z[:, t0:t0 + n] for z in (u, delta, Bm, Cm, gy_all))
                la, b, h = ChunkScan.chunk(uc, dc, At, Bc, entering[c])
                la_next = torch.cat([la[:, 1:], torch.zeros_like(la[:, :1])], 1)
                direct = Cc[..., None] * gy[:, :, None]
                g = ChunkScan.scan_in_chunk(la_next.view(B, n, N * D), direct.view(B, n, N * D),
                                            gs.reshape(B, N * D), True).view(B, n, N, D)
                h_prev = torch.cat([entering[c][:, None], h[:, :n - 1]], 1)
                a = la.exp_()
                gla = g * h_prev * a
                gs = a[:, 0] * g[:, 0]
                gdu = (g * Bc[..., None]).sum(2)
                gu.append(gdu * dc)
                gd.append(gdu * uc + (gla * At).sum(2))
                gAt += (gla * dc[:, :, None]).sum((0, 1))
                gB.append((g * (dc * uc)[:, :, None]).sum(-1))
                gC.append((h * gy[:, :, None]).sum(-1))
            cat = lambda xs: torch.cat(xs[::-1], 1)
            return cat(gu), cat(gd), gAt.t(), cat(gB), cat(gC), gs.transpose(1, 2), None

    class Mamba(nn.Module):
        def __init__(self, C, L, N=16, K=4, expand=2, Q=16):
            super().__init__()
            Di, R = expand * C, (C + 15) // 16
            self.Di, self.N, self.K, self.R, self.Q = Di, N, K, R, Q
            self.norm = RMSNorm(C)
            self.in_proj, self.out_proj = nn.Linear(C, 2 * Di, bias=False), nn.Linear(Di, C, bias=False)
            nn.init.normal_(self.in_proj.weight, 0, 0.02)
            nn.init.normal_(self.out_proj.weight, 0, 0.02 / math.sqrt(2 * L))
            cb = 1 / math.sqrt(K)
            self.conv_weight = nn.Parameter(torch.empty(Di, K).uniform_(-cb, cb))
            self.conv_bias = nn.Parameter(torch.empty(Di).uniform_(-cb, cb))
            self.x_proj = nn.Linear(Di, R + 2 * N, bias=False)
            self.dt_proj = nn.Linear(R, Di, bias=True)
            with torch.no_grad():
                self.dt_proj.weight.uniform_(-R ** -0.5, R ** -0.5)
                dt = (torch.rand(Di) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).exp().clamp_min(1e-4)
                self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            self.A_log = nn.Parameter(torch.arange(1, N + 1, dtype=torch.float32).log().expand(Di, N).clone())
            self.D = nn.Parameter(torch.ones(Di))

        def params(self, u):
            dbc = self.x_proj(u)
            R, N = self.R, self.N
            return F.softplus(self.dt_proj(dbc[..., :R])), dbc[..., R:R + N], dbc[..., R + N:]

        def forward(self, x, state=None, start=0):  # x [B, T, C]
            xi, z = self.in_proj(self.norm(x)).chunk(2, -1)
            A = -self.A_log.exp()
            if state is not None and x.size(1) == 1:  # the recurrent path: one token on the state
                conv, s = state
                window = torch.cat([conv.to(xi.dtype), xi.transpose(1, 2)], -1)  # [B, Di, K]
                u = F.silu((window * self.conv_weight).sum(-1) + self.conv_bias)  # [B, Di]
                delta, Bm, Cm = self.params(u[:, None])
                dt = delta[:, 0, :, None]
                s_new = (dt * A).exp() * s + (dt * u[..., None]) * Bm[:, 0, None]
                y = (s_new @ Cm[:, 0, :, None].to(s_new.dtype))[..., 0] + u * self.D
                conv.copy_(window[..., 1:])
                s.copy_(s_new)
                y = y[:, None]
            else:
                xt = F.pad(xi.transpose(1, 2), (self.K - 1, 0))
                u = F.silu(F.conv1d(xt, self.conv_weight[:, None], self.conv_bias, groups=self.Di)).transpose(1, 2)
                delta, Bm, Cm = self.params(u)
                s0 = state[1] if state is not None else u.new_zeros(x.size(0), self.Di, self.N, dtype=torch.float32)
                with torch.autocast("cuda", enabled=False):
                    y, s = ChunkScan.apply(u.float(), delta.float(), A, Bm.float(), Cm.float(), s0.float(), self.Q)
                if state is not None:
                    state[0].copy_(xt[..., -(self.K - 1):])
                    state[1].copy_(s)
                y = y + u * self.D
            return x + self.out_proj(y * F.silu(z))

    class LM(nn.Module):
        def __init__(self, kind):
            super().__init__()
            C = 768
            self.kind, self.L = kind, 12 if kind == "gpt" else 24
            self.wte = nn.Embedding(V, C)
            nn.init.normal_(self.wte.weight, 0, 0.02)
            self.blocks = nn.ModuleList(Attn(C, 12, self.L) if kind == "gpt" else Mamba(C, self.L) for _ in range(self.L))
            self.norm = RMSNorm(C)

        def forward(self, idx, caches=None, start=0):  # idx [B, T] -> logits [B, T, V]
            x = self.wte(idx)
            for i, b in enumerate(self.blocks):
                x = b(x, caches[i] if caches is not None else None, start)
            # As LMModel::lm_logits on CUDA: the head's weight padded to 64 rows so cuBLAS gets aligned
            # logits (50257 columns fall back to slow unaligned kernels), then the first V columns.
            w = F.pad(self.wte.weight, (0, 0, 0, (64 - V % 64) % 64))
            return (self.norm(x) @ w.t())[..., :V]

        def init_caches(self, B, max_len):
            dev = self.wte.weight.device
            if self.kind == "gpt":
                z = lambda: torch.zeros(B, 12, max_len, 64, device=dev, dtype=torch.bfloat16)
                return [(z(), z()) for _ in self.blocks]
            return [(torch.zeros(B, b.Di, b.K - 1, device=dev, dtype=torch.bfloat16),
                     torch.zeros(B, b.Di, b.N, device=dev)) for b in self.blocks]

    LM.ChunkScan = ChunkScan
    return LM


def build_nanogpt(torch, L=12, H=12, C=768, vocab=50304, block=T):
    """nanoGPT's model.py (GPT-2 124M config, dropout 0, bias True), forward returning the loss."""
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):  # x [B, T, C]
            B, t, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (z.view(B, t, H, C // H).transpose(1, 2) for z in (q, k, v))  # [B, H, T, D]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, t, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, C), nn.Embedding(block, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            self.lm_head = nn.Linear(C, vocab, bias=False)
            self.wte.weight = self.lm_head.weight  # tied
            for name, p in self.named_parameters():
                if name.endswith("proj.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L))
                elif p.dim() == 2:
                    nn.init.normal_(p, 0.0, 0.02)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):  # idx, targets [B, T] -> mean cross-entropy
            pos = torch.arange(idx.size(1), device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for b in self.h:
                x = b(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    return GPT


def check_scan(torch, LM):
    """The chunked scan and its hand-written backward against autograd through the plain recurrence
    (float64, CPU): the reference must compute what LinearNexus computes before it is timed."""
    torch.manual_seed(0)
    B, t, D, N = 2, 37, 5, 3
    f64 = dict(dtype=torch.float64, requires_grad=True)
    u, delta = torch.randn(B, t, D, **f64), torch.rand(B, t, D, **f64)
    A = (-torch.rand(D, N, dtype=torch.float64) - 0.1).requires_grad_()
    Bm, Cm, s0 = torch.randn(B, t, N, **f64), torch.randn(B, t, N, **f64), torch.randn(B, D, N, **f64)
    ins = (u, delta, A, Bm, Cm, s0)
    gy, gs = torch.randn(B, t, D, dtype=torch.float64), torch.randn(B, D, N, dtype=torch.float64)
    y, s = LM.ChunkScan.apply(*ins, 8)
    got = torch.autograd.grad((y * gy).sum() + (s * gs).sum(), ins)
    s, ys = s0, []
    for i in range(t):
        dt = delta[:, i, :, None]
        s = (dt * A).exp() * s + dt * u[:, i, :, None] * Bm[:, i, None]
        ys.append((s @ Cm[:, i, :, None])[..., 0])
    y_ref = torch.stack(ys, 1)
    want = torch.autograd.grad((y_ref * gy).sum() + (s * gs).sum(), ins)
    y, got = y.detach(), [g.detach() for g in got]
    err = max([float((y - y_ref.detach()).abs().max())] + [float((a - b).abs().max()) for a, b in zip(got, want)])
    print(f"reference chunked scan vs plain recurrence (values and gradients): max abs error {err:.2e}", flush=True)
    assert err < 1e-9, "the reference's chunked scan is wrong"


# ---- timing --------------------------------------------------------------------------------------
def time_per_call(torch, f, warm, iters):
    for _ in range(warm):
        f()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def train(torch, LM, kind, impl, B, steps):
    F = torch.nn.functional
    torch.manual_seed(0)
    model = LM(kind).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    fwd = torch.compile(model) if impl == "pytorch-compile" else model
    x = torch.randint(0, V, (B, T), device="cuda")
    y = torch.randint(0, V, (B, T), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = fwd(x)
        F.cross_entropy(logits.float().view(-1, V), y.view(-1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.backends.cuda.enable_cudnn_sdp(True)  # as compat::attention: cuDNN where Tq == Tk
    torch.cuda.reset_peak_memory_stats()
    try:
        sec = time_per_call(torch, step, 3, steps)
    except torch.OutOfMemoryError:
        del model, opt
        torch.cuda.empty_cache()
        result(kind="train", impl=impl, model=kind + ("-small"), batch=B, oom=True)
        return None
    n = sum(p.numel() for p in model.parameters())
    result(kind="train", impl=impl, model=kind + "-small", batch=B, seq=T, params=n, ms_per_step=1e3 * sec,
           tokens_per_s=B * T / sec, peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30)
    return model


def train_nanogpt(torch, GPT, B, steps, model_name="gpt-small", vocab=V):
    torch.manual_seed(0)
    model = GPT().cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=True)
    fwd = torch.compile(model)
    x = torch.randint(0, vocab, (B, T), device="cuda")
    y = torch.randint(0, vocab, (B, T), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.backends.cuda.enable_cudnn_sdp(True)
    torch.cuda.reset_peak_memory_stats()
    try:
        sec = time_per_call(torch, step, 3, steps)
    except torch.OutOfMemoryError:
        result(kind="train", impl="nanogpt-compile", model=model_name, batch=B, oom=True)
        return
    n = sum(p.numel() for p in model.parameters())
    # nanoGPT's own count for MFU: 6 N (without the position embedding) + 12 L C T.
    fpt = 6 * (n - model.wpe.weight.numel()) + 12 * 12 * 768 * T
    result(kind="train", impl="nanogpt-compile", model=model_name, batch=B, seq=T, params=n, ms_per_step=1e3 * sec,
           tokens_per_s=B * T / sec, peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30, flops_per_token=fpt)


def decode_compiled(torch, model, kind, B, prompt=128, n=512):
    """gpt-fast's recipe: static caches as module buffers, the position as a tensor, the one-token
    step under torch.compile(mode="reduce-overhead") (CUDA graphs); prefill eager."""
    model.eval()
    torch.backends.cuda.enable_cudnn_sdp(False)
    caches = model.init_caches(B, prompt + n)
    for i, b in enumerate(model.blocks):  # buffers: static addresses the graph writes in place
        b.register_buffer("c0", caches[i][0], persistent=False)
        b.register_buffer("c1", caches[i][1], persistent=False)

    def step(tok, pos):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(tok, [(b.c0, b.c1) for b in model.blocks], pos)[:, -1].argmax(-1, keepdim=True)

    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)

    def run(new):
        with torch.no_grad():
            for b in model.blocks:
                b.c0.zero_()
                b.c1.zero_()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                tok = model(torch.randint(0, V, (B, prompt), device="cuda"), [(b.c0, b.c1) for b in model.blocks], 0)
            tok = tok[:, -1].argmax(-1, keepdim=True)
            pos = torch.tensor([prompt], device="cuda")
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(new):
                torch.compiler.cudagraph_mark_step_begin()
                tok = compiled(tok, pos).clone()
                pos += 1
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(16)
    run(16)
    result(kind="decode", impl="pytorch-compile-static", model=kind + "-small", batch=B, prompt=prompt, new_tokens=n,
           tokens_per_s=B * n / run(n))
    for b in model.blocks:
        del b.c0, b.c1


def decode(torch, model, kind, B, prompt=128, n=512):
    model.eval()
    torch.backends.cuda.enable_cudnn_sdp(False)  # as compat::attention: no per-key-length cuDNN plans

    def run(new):
        caches = model.init_caches(B, prompt + new)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            tok = model(torch.randint(0, V, (B, prompt), device="cuda"), caches, 0)[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(new):
                tok = model(tok, caches, prompt + i)[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(16)
    result(kind="decode", impl="pytorch-eager", model=kind + "-small", batch=B, prompt=prompt, new_tokens=n,
           tokens_per_s=B * n / run(n))


# ---- the table -------------------------------------------------------------------------------------
def table(files):
    rows = [json.loads(l[7:]) for f in files for l in open(f) if l.startswith("RESULT ")]
    tflops = next((r["tflops"] for r in rows if r["kind"] == "matmul"), None)
    gpt_fpt = next((r.get("flops_per_token") for r in rows if r.get("flops_per_token") and r["model"] == "gpt-small"), None)
    print(f"bf16 matmul rate measured in this call (8192^3, random): {tflops:.0f} TFLOP/s\n")
    print("| what | implementation | batch | tokens/s | ms/step | peak GPU memory | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["kind"] == "train":
            if r.get("oom"):
                print(f"| train {r['model']} | {r['impl']} | {r['batch']} | out of memory | | | |")
                continue
            fpt = r.get("flops_per_token") or (gpt_fpt if r["model"] == "gpt-small" else None)
            mfu = f"{100 * r['tokens_per_s'] * fpt / (tflops * 1e12):.1f}%" if fpt else ""
            print(f"| train {r['model']} T={r['seq']} | {r['impl']} | {r['batch']} | {r['tokens_per_s']:,.0f} | "
                  f"{r['ms_per_step']:.1f} | {r['peak_gib']:.1f} GiB | {mfu} |")
    for r in rows:
        if r["kind"] == "decode":
            shape = f"{r.get('prompt', 128)} + {r.get('new_tokens', 512)}"
            print(f"| decode {r['model']} ({shape}) | {r['impl']} | {r['batch']} | {r['tokens_per_s']:,.0f} | | | |")
    for r in rows:
        if r["kind"] == "breakdown":
            print(f"\nbreakdown of one {r['model']} step:", json.dumps(r))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mamba-batch", type=int, default=0, help="default: --batch")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--table", nargs="+")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--models", default="gpt,nanogpt,mamba",
                    help="which of gpt, nanogpt, nanogpt-char (a 65-token vocabulary), mamba to run")
    ap.add_argument("--decode-only", action="store_true", help="only the compiled static-cache decoding")
    a = ap.parse_args()
    if a.table:
        return table(a.table)
    import torch
    models = a.models.split(",")
    LM = build(torch)
    if a.decode_only:
        torch.manual_seed(0)
        for kind, batches in (("gpt", (1, 16, 64)), ("mamba", (1, 16))):
            model = LM(kind).cuda()
            for B in batches:
                decode_compiled(torch, model, kind, B)
            del model
            torch.cuda.empty_cache()
        return
    if "nanogpt" in models:  # first: the fastest peer, on a fresh allocator
        train_nanogpt(torch, build_nanogpt(torch), a.batch, a.steps)
        torch.cuda.empty_cache()
    if "nanogpt-char" in models:  # nanoGPT's shakespeare_char vocabulary (65) on the same trunk
        train_nanogpt(torch, build_nanogpt(torch, vocab=65), a.batch, a.steps, "gpt-small-char", 65)
        torch.cuda.empty_cache()
    if "gpt" in models:
        gpt = train(torch, LM, "gpt", "pytorch-eager", a.batch, a.steps)
        if gpt is not None:
            for B in (1, 16):
                decode(torch, gpt, "gpt", B)
                if not a.skip_compile:
                    decode_compiled(torch, gpt, "gpt", B)
        del gpt
        torch.cuda.empty_cache()
        if not a.skip_compile:
            train(torch, LM, "gpt", "pytorch-compile", a.batch, a.steps)
            torch.cuda.empty_cache()
    if "mamba" not in models:
        return
    check_scan(torch, LM)
    mb = a.mamba_batch or a.batch
    mamba = train(torch, LM, "mamba", "pytorch-eager", mb, max(2, a.steps // 3))
    if mamba is None:  # autograd keeps more of the scan's intermediates than ours: try half the batch
        torch.cuda.empty_cache()
        mamba = train(torch, LM, "mamba", "pytorch-eager", mb // 2, max(2, a.steps // 3))
    if mamba is not None:
        for B in (1, 16):
            decode(torch, mamba, "mamba", B)
            if not a.skip_compile:
                decode_compiled(torch, mamba, "mamba", B)


if __name__ == "__main__":
    sys.exit(main())
