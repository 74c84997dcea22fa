"""Times the PyTorch chunked SSD scan that transformers' Mamba-2 runs without
the CUDA kernels of mamba_ssm (the segment_sum code path of Mamba2Mixer,
torch_forward in transformers 4.x), at the shapes of kernels/cuda's BenchmarkSSDChunkScan, on the
same GPU, with torch.cuda.Event timing (warm-up, median of repeats).

Inputs as the Go benchmark: x, B, C bf16; dt (already softplus'ed), A, D
float32; batch 8, seqlen 4096, 32 heads x headdim 80, d_state 80, 32 groups.
torch_forward upcasts x, B and C to float32 and computes in float32; that is
what is timed (the casts included). Bytes are counted as in the Go
benchmark: x, B, C, dt read once, y (float32) written once.

Two torch versions are timed:
  hf      the SSD section of transformers' torch_forward, written with the
          module's own helpers (pad_tensor_by_size, reshape_into_chunks,
          segment_sum) when transformers provides them;
  einsum  the same algorithm with einsum contractions (the Mamba-2 paper's
          minimal SSD), a stronger torch baseline.
A configuration that runs out of GPU memory at batch 8 is timed as 8 calls of
batch 1 (reported as such).

Usage: PYTHONUNBUFFERED=1 python3 testdata/gen/bench_ssd_torch.py [--small]
"""

import argparse
import inspect
import json
import statistics
import sys

import torch

B_, L_, H_, P_, N_, G_ = 8, 4096, 32, 80, 80, 32


def helpers():
    """transformers' own helpers when present, else equivalents; and a note
    naming the Mamba2Mixer method that runs the segment_sum code path."""
    src = "local"
    try:
        from transformers.models.mamba2 import modeling_mamba2 as m

        pad, chunks, segsum = m.pad_tensor_by_size, m.reshape_into_chunks, m.segment_sum
        users = []
        for owner, prefix in ((m.Mamba2Mixer, "Mamba2Mixer."), (m, "")):
            for name, fn in inspect.getmembers(owner, inspect.isfunction):
                if getattr(fn, "__module__", None) != m.__name__ or name == "segment_sum":
                    continue
                try:
                    if "segment_sum(" in inspect.getsource(fn):
                        users.append(prefix + name)
                except (OSError, TypeError):
                    pass
        src = f"transformers.models.mamba2.modeling_mamba2 (segment_sum called by {', '.join(users) or 'nothing found'})"
        return pad, chunks, segsum, src
    except Exception as exc:  # fall back, and say so
        src = f"local copies ({type(exc).__name__}: {exc})"

    def pad(t, pad_size):
        shape = (0, 0, 0, 0, 0, pad_size, 0, 0) if t.dim() == 4 else (0, 0, 0, pad_size, 0, 0)
        return torch.nn.functional.pad(t, shape, mode="constant", value=0)

    def chunks(t, pad_size, chunk):
        t = pad(t, pad_size)
        if t.dim() == 3:
            return t.reshape(t.shape[0], -1, chunk, t.shape[2])
        return t.reshape(t.shape[0], -1, chunk, t.shape[2], t.shape[3])

    def segsum(x):
        T = x.size(-1)
        x = x[..., None].expand(*x.size(), T)
        mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), diagonal=-1)
        x = x.masked_fill(~mask, 0)
        s = torch.cumsum(x, dim=-2)
        mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), diagonal=0)
        return s.masked_fill(~mask, -torch.inf)

    return pad, chunks, segsum, src


PAD, CHUNKS, SEGSUM, HELPERS = helpers()


def hf_ssd(x, dt, A, B, C, D, chunk):
    """The SSD section of Mamba2Mixer.torch_forward (no cache), y [b,l,h,p]."""
    b, l, h, p = x.shape
    x = x.float()
    B = B.float().repeat_interleave(h // B.shape[2], dim=2, output_size=h)
    C = C.float().repeat_interleave(h // C.shape[2], dim=2, output_size=h)
    pad_size = (chunk - l % chunk) % chunk
    D_residual = D[..., None] * PAD(x, pad_size)
    x = x * dt[..., None]
    A = A.to(x.dtype) * dt
    x, A, B, C = [CHUNKS(t, pad_size, chunk) for t in (x, A, B, C)]
    A = A.permute(0, 3, 1, 2)
    A_cumsum = torch.cumsum(A, dim=-1)
    Lm = torch.exp(SEGSUM(A))
    G = (C[:, :, :, None, :, :] * B[:, :, None, :, :, :]).sum(dim=-1)
    M = (G[..., None] * Lm.permute(0, 2, 3, 4, 1)[..., None]).sum(dim=-1)
    Y_diag = (M[..., None] * x[:, :, None]).sum(dim=3)
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    B_decay = B * decay_states.permute(0, -2, -1, 1)[..., None]
    states = (B_decay[..., None, :] * x[..., None]).sum(dim=2)
    previous_states = torch.zeros_like(states[:, :1])
    states = torch.cat([previous_states, states], dim=1)
    decay_chunk = torch.exp(SEGSUM(torch.nn.functional.pad(A_cumsum[:, :, :, -1], (1, 0))))
    decay_chunk = decay_chunk.transpose(1, 3)
    new_states = (decay_chunk[..., None, None] * states[:, :, None, ...]).sum(dim=1)
    states = new_states[:, :-1]
    state_decay_out = torch.exp(A_cumsum)
    C_times_states = C[..., None, :] * states[:, :, None, ...]
    Y_off = C_times_states.sum(-1) * state_decay_out.permute(0, 2, 3, 1)[..., None]
    y = (Y_diag + Y_off).reshape(b, -1, h, p) + D_residual
    return y[:, :l]


def einsum_ssd(x, dt, A, B, C, D, chunk):
    """The same chunked algorithm with einsum contractions, y [b,l,h,p]."""
    b, l, h, p = x.shape
    g = B.shape[2]
    xf, Bf, Cf = x.float(), B.float(), C.float()
    pad_size = (chunk - l % chunk) % chunk
    X = CHUNKS(xf * dt[..., None], pad_size, chunk)           # b c q h p
    Ad = CHUNKS(A.float()[None, None, :] * dt, pad_size, chunk).permute(0, 3, 1, 2)  # b h c q
    Bc = CHUNKS(Bf, pad_size, chunk).repeat_interleave(h // g, dim=3)  # b c q h n
    Cc = CHUNKS(Cf, pad_size, chunk).repeat_interleave(h // g, dim=3)
    cs = torch.cumsum(Ad, dim=-1)
    Lm = torch.exp(SEGSUM(Ad))                                # b h c l s
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, Lm, X)
    decay_states = torch.exp(cs[..., -1:] - cs)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_states, X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(SEGSUM(torch.nn.functional.pad(cs[..., -1], (1, 0))))
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)[:, :-1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states, torch.exp(cs))
    y = (Y_diag + Y_off).reshape(b, -1, h, p)[:, :l]
    return y + D[None, None, :, None] * xf


def time_ms(fn, warm, reps):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="batch 1, seqlen 256, 4 heads")
    ap.add_argument("--chunks", default="64,256")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    b, l, h, p, n, g = B_, L_, H_, P_, N_, G_
    if args.small:
        b, l, h, g = 1, 256, 4, 4
    dev = torch.device("cuda")
    import transformers

    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                      "gpu": torch.cuda.get_device_name(0), "helpers": HELPERS}), flush=True)
    gen = torch.Generator(device=dev).manual_seed(1234)

    def u(lo, hi, *shape, dtype=torch.float32):
        return (lo + (hi - lo) * torch.rand(*shape, device=dev, generator=gen)).to(dtype)

    x = u(-1, 1, b, l, h, p, dtype=torch.bfloat16)
    dt = u(0.001, 0.1, b, l, h)
    A = u(-16, -1, h)
    Bm = u(-1, 1, b, l, g, n, dtype=torch.bfloat16)
    Cm = u(-1, 1, b, l, g, n, dtype=torch.bfloat16)
    D = u(0.5, 1.5, h)
    nbytes = b * l * (h * p * 2 + 2 * g * n * 2 + 4 * h + 4 * h * p)

    # Sanity: both torch versions agree (first sequence, short prefix).
    with torch.no_grad():
        s = (slice(0, 1), slice(0, min(l, 512)))
        ya = hf_ssd(x[s], dt[s], A, Bm[s], Cm[s], D, 64)
        yb = einsum_ssd(x[s], dt[s], A, Bm[s], Cm[s], D, 64)
        rel = ((ya - yb).norm() / yb.norm()).item()
        print(json.dumps({"check": "hf vs einsum", "relerr": rel}), flush=True)
        del ya, yb

    rows = []
    for chunk in [int(c) for c in args.chunks.split(",")]:
        for name, fn in (("hf", hf_ssd), ("einsum", einsum_ssd)):
            torch.cuda.empty_cache()
            mode = f"batch {b}"
            try:
                with torch.no_grad():
                    med, mn = time_ms(lambda: fn(x, dt, A, Bm, Cm, D, chunk), 1, args.reps)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                mode = f"{b} calls of batch 1 (batch {b} ran out of memory)"
                try:
                    def per_seq():
                        for i in range(b):
                            fn(x[i:i + 1], dt[i:i + 1], A, Bm[i:i + 1], Cm[i:i + 1], D, chunk)
                    with torch.no_grad():
                        med, mn = time_ms(per_seq, 1, args.reps)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rows.append({"impl": name, "chunk": chunk, "mode": "out of memory even at batch 1"})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
            peak = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
            rows.append({"impl": name, "chunk": chunk, "mode": mode, "ms_median": round(med, 3), "ms_min": round(mn, 3),
                         "GB_per_s": round(nbytes / (med * 1e-3) / 1e9, 1), "peak_GiB": round(peak, 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nshape b={b} l={l} h={h} p={p} n={n} g={g}; minimal bytes {nbytes / 1e9:.3f} GB")
    print(f"{'impl':8} {'chunk':>5} {'ms(median)':>11} {'GB/s':>8}  mode")
    for r in rows:
        if "ms_median" in r:
            print(f"{r['impl']:8} {r['chunk']:>5} {r['ms_median']:>11.3f} {r['GB_per_s']:>8.1f}  {r['mode']}")
        else:
            print(f"{r['impl']:8} {r['chunk']:>5} {'-':>11} {'-':>8}  {r['mode']}")


if __name__ == "__main__":
    sys.exit(main())
