#!/usr/bin/env python3
"""Golden float64 references for package kernels (testdata/golden/kernels).

Run on a machine with torch and transformers (no network needed):

    PYTHONUNBUFFERED=1 python3 testdata/gen/kernels_ref.py --out DIR

Every file is a safetensors file of F64 tensors with the parameters of the
case in its __metadata__. Each computation is written from the formulas of
SPEC §3-4 in float64 and cross-checked inside this script against an
independent path: transformers' Mamba2Mixer.torch_forward (ngroups=1, where
its layout and ours agree), a vectorised chunked SSD against the sequential
recurrence, transformers' apply_rotary_pos_emb (Llama, Phi partial rotary),
torch's scaled_dot_product_attention, layer_norm, rms_norm, gelu, softplus
and conv1d. The script fails (non-zero exit) when a cross-check disagrees.
"""

import argparse
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_default_dtype(torch.float64)
F64 = torch.float64

failures = []


def agree(what, got, want, tol):
    """Records and prints the relative error ||got-want||/||want||."""
    got = got.to(F64)
    want = want.to(F64)
    err = ((got - want).norm() / want.norm().clamp_min(1e-300)).item()
    ok = err <= tol
    print(f"  {'ok  ' if ok else 'FAIL'} {what}: rel err {err:.3e} (tol {tol:.0e})")
    if not ok:
        failures.append(what)
    return err


def save(out, name, tensors, meta):
    path = os.path.join(out, name)
    tensors = {k: v.detach().to(F64).contiguous() for k, v in tensors.items()}
    save_file(tensors, path, metadata={k: str(v) for k, v in meta.items()})
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


# ---------------------------------------------------------------------------
# The formulas (SPEC §3-4), float64.


def softplus(x):
    return torch.where(x > 20, x, torch.log1p(torch.exp(torch.clamp(x, max=20))))


def silu(x):
    return x / (1 + torch.exp(-x))


def causal_conv1d(u, w, b, act):
    """u [b,l,c], w [c,k], b [c] or None: out[t,c] = b[c] + sum_j w[c,j] u[t-k+1+j,c]."""
    nb, l, c = u.shape
    k = w.shape[1]
    out = torch.zeros_like(u) if b is None else b.expand(nb, l, c).clone()
    for j in range(k):
        shift = k - 1 - j
        if shift >= l:
            continue
        out[:, shift:, :] += w[:, j] * u[:, : l - shift, :]
    return silu(out) if act else out


def repeat_heads(t, src_heads, heads, dim):
    """[.., src_heads*dim] -> [.., heads, dim], head h = src head h // (heads // src_heads)."""
    lead = t.shape[:-1]
    t = t.reshape(*lead, src_heads, dim)
    return t.repeat_interleave(heads // src_heads, dim=-2)


def ssd_recurrence(x, dt, A, B, C, D, state):
    """Sequential Mamba-2 scan. x [b,l,h,p], dt [b,l,h], A [h], B,C [b,l,g,n], D [h] or None,
    state [b,h,p,n] or None. Returns y [b,l,h,p] and the final state."""
    nb, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    Bh = B.repeat_interleave(h // g, dim=2)
    Ch = C.repeat_interleave(h // g, dim=2)
    S = torch.zeros(nb, h, p, n) if state is None else state.clone()
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)  # [b,h]
        S = decay[:, :, None, None] * S + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", S, Ch[:, t])
        if D is not None:
            y = y + D[:, None] * x[:, t]
        ys.append(y)
    return torch.stack(ys, dim=1), S


def ssd_chunked(x, dt, A, B, C, D, state, chunk):
    """The chunked (SSD) form of SPEC §3, vectorised within each chunk; every exponent <= 0."""
    nb, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    Bh = B.repeat_interleave(h // g, dim=2)
    Ch = C.repeat_interleave(h // g, dim=2)
    S = torch.zeros(nb, h, p, n) if state is None else state.clone()
    ys = []
    for c0 in range(0, l, chunk):
        q = min(chunk, l - c0)
        xc, dtc, Bc, Cc = x[:, c0 : c0 + q], dt[:, c0 : c0 + q], Bh[:, c0 : c0 + q], Ch[:, c0 : c0 + q]
        cs = torch.cumsum(dtc * A, dim=1)  # [b,q,h]
        diff = (cs[:, :, None, :] - cs[:, None, :, :]).clamp(max=0)  # [b,l,s,h]
        mask = torch.tril(torch.ones(q, q, dtype=torch.bool))[None, :, :, None]
        decay = torch.where(mask, torch.exp(diff), torch.zeros(()))
        G = torch.einsum("blhn,bshn->blsh", Cc, Bc)
        M = G * decay * dtc[:, None, :, :]
        y = torch.einsum("blsh,bshp->blhp", M, xc)
        y = y + torch.exp(cs.clamp(max=0))[..., None] * torch.einsum("bhpn,blhn->blhp", S, Cc)
        if D is not None:
            y = y + D[:, None] * xc
        last = cs[:, -1]  # [b,h]
        w = torch.exp((last[:, None] - cs).clamp(max=0)) * dtc  # [b,q,h]
        S = torch.exp(last.clamp(max=0))[:, :, None, None] * S + torch.einsum("bsh,bshp,bshn->bhpn", w, xc, Bc)
        ys.append(y)
    return torch.cat(ys, dim=1), S


def gated_rmsnorm(y, z, w, group, eps):
    g = y * silu(z) if z is not None else y
    shp = g.shape
    gg = g.reshape(*shp[:-1], shp[-1] // group, group)
    gg = gg / torch.sqrt(gg.pow(2).mean(-1, keepdim=True) + eps)
    return gg.reshape(shp) * w


def mamba2_mixer(cfg, W, hidden, chunk=None):
    """The MaTVLM Mamba-2 mixer (SPEC §3). W holds in_proj, conv1d_weight [ch,1,k], conv1d_bias,
    dt_bias, A_log, D, norm_weight, out_proj."""
    H, P, N, G, DXB = cfg["nheads"], cfg["headdim"], cfg["d_state"], cfg["ngroups"], cfg["d_xb"]
    d_inner = H * P
    conv_dim = 2 * DXB + G * N
    nb, l, _ = hidden.shape
    proj = hidden @ W["in_proj"].T
    z = proj[..., :d_inner]
    xBC = proj[..., d_inner : d_inner + conv_dim]
    dt_raw = proj[..., d_inner + conv_dim :]
    xBC = causal_conv1d(xBC, W["conv1d_weight"][:, 0, :], W["conv1d_bias"], True)
    x = repeat_heads(xBC[..., :DXB], DXB // P, H, P)
    B = repeat_heads(xBC[..., DXB : 2 * DXB], DXB // N, G, N)
    C = xBC[..., 2 * DXB :].reshape(nb, l, G, N)
    dt = softplus(dt_raw + W["dt_bias"])
    A = -torch.exp(W["A_log"])
    if chunk is None:
        y, _ = ssd_recurrence(x, dt, A, B, C, W["D"], None)
    else:
        y, _ = ssd_chunked(x, dt, A, B, C, W["D"], None, chunk)
    y = gated_rmsnorm(y.reshape(nb, l, d_inner), z, W["norm_weight"], d_inner // G, cfg["norm_eps"])
    return y @ W["out_proj"].T


def random_mixer_weights(gen, cfg):
    H, P, N, G, DXB, K, d = cfg["nheads"], cfg["headdim"], cfg["d_state"], cfg["ngroups"], cfg["d_xb"], cfg["conv_kernel"], cfg["d_model"]
    d_inner = H * P
    conv_dim = 2 * DXB + G * N
    d_proj = d_inner + conv_dim + H

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    dt = torch.exp(math.log(1e-3) + (math.log(1e-1) - math.log(1e-3)) * torch.rand(H, generator=gen)).clamp(min=1e-4)
    return {
        "in_proj": u(-1, 1, d_proj, d) / math.sqrt(d),
        "conv1d_weight": u(-0.5, 0.5, conv_dim, 1, K),
        "conv1d_bias": u(-0.5, 0.5, conv_dim),
        "dt_bias": dt + torch.log(-torch.expm1(-dt)),
        "A_log": torch.log(u(1, 16, H)),
        "D": u(0.8, 1.2, H),
        "norm_weight": u(0.8, 1.2, d_inner),
        "out_proj": u(-1, 1, d, d_inner) / math.sqrt(d_inner),
    }


# ---------------------------------------------------------------------------
# Cases.


def mixer_cases(out, gen):
    print("Mamba-2 mixer")
    # MaTVLM layout with GQA: 4 heads, 2 kv heads, ngroups = nheads, headdim = d_state.
    cfg = dict(d_model=48, nheads=4, headdim=12, d_state=12, ngroups=4, d_xb=24, conv_kernel=4, norm_eps=1e-5, chunk=8)
    W = random_mixer_weights(gen, cfg)
    hidden = torch.randn(2, 29, cfg["d_model"], generator=gen)
    y = mamba2_mixer(cfg, W, hidden)
    agree("mixer: chunked vs sequential", mamba2_mixer(cfg, W, hidden, chunk=cfg["chunk"]), y, 1e-12)
    save(out, "mamba2_mixer.safetensors", {"hidden": hidden, "out": y, **W}, cfg)

    # ngroups = 1 (the layout transformers' Mamba2Mixer shares with ours: d_xb = d_inner = d_state).
    cfg1 = dict(d_model=16, nheads=4, headdim=8, d_state=32, ngroups=1, d_xb=32, conv_kernel=4, norm_eps=1e-5, chunk=8)
    W1 = random_mixer_weights(gen, cfg1)
    hidden1 = torch.randn(2, 21, cfg1["d_model"], generator=gen)
    y1 = mamba2_mixer(cfg1, W1, hidden1)
    agree("mixer (ngroups=1): chunked vs sequential", mamba2_mixer(cfg1, W1, hidden1, chunk=cfg1["chunk"]), y1, 1e-12)
    save(out, "mamba2_mixer_ngroups1.safetensors", {"hidden": hidden1, "out": y1, **W1}, cfg1)
    hf_mixer_check(cfg1, W1, hidden1, y1)


def hf_mixer_check(cfg, W, hidden, want):
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    H, P, N = cfg["nheads"], cfg["headdim"], cfg["d_state"]
    assert (H * P) % cfg["d_model"] == 0, "transformers needs d_inner = expand * d_model with an integer expand"
    hc = Mamba2Config(
        num_heads=H, head_dim=P, hidden_size=cfg["d_model"], expand=(H * P) // cfg["d_model"], state_size=N,
        n_groups=cfg["ngroups"], conv_kernel=cfg["conv_kernel"], use_conv_bias=True, use_bias=False,
        chunk_size=cfg["chunk"], layer_norm_epsilon=cfg["norm_eps"], hidden_act="silu", num_hidden_layers=1,
    )
    if getattr(hc, "layer_types", None) is None:
        hc.layer_types = ["mamba"]
    mixer = Mamba2Mixer(hc, layer_idx=0).to(F64)
    assert mixer.intermediate_size == H * P, (mixer.intermediate_size, H * P)
    with torch.no_grad():
        mixer.in_proj.weight.copy_(W["in_proj"])
        mixer.conv1d.weight.copy_(W["conv1d_weight"])
        mixer.conv1d.bias.copy_(W["conv1d_bias"])
        mixer.dt_bias.copy_(W["dt_bias"])
        mixer.A_log.copy_(W["A_log"])
        mixer.D.copy_(W["D"])
        mixer.norm.weight.copy_(W["norm_weight"])
        mixer.out_proj.weight.copy_(W["out_proj"])
        # transformers <= 5.x named the pure-torch path torch_forward; 5.17 has only forward, which
        # takes that path on CPU tensors (no CUDA kernels): keep everything on the CPU.
        run = getattr(mixer, "torch_forward", None) or mixer.forward
        print(f"  transformers path: Mamba2Mixer.{run.__name__} on {hidden.device}")
        got = run(hidden)
    # The torch path casts x, B, C and the gated norm to float32: agreement is to float32 rounding.
    agree("mixer (ngroups=1) vs transformers Mamba2Mixer.torch_forward", got, want, 1e-5)


def ssd_cases(out, gen):
    print("SSD scans")
    nb, l, h, p, g, n, chunk = 2, 45, 4, 6, 2, 5, 16
    x = torch.randn(nb, l, h, p, generator=gen)
    dt = 0.001 + 0.5 * torch.rand(nb, l, h, generator=gen)
    A = -(0.1 + 4 * torch.rand(h, generator=gen))
    B = torch.randn(nb, l, g, n, generator=gen)
    C = torch.randn(nb, l, g, n, generator=gen)
    D = 0.5 + torch.rand(h, generator=gen)
    s0 = torch.randn(nb, h, p, n, generator=gen)
    y, s1 = ssd_recurrence(x, dt, A, B, C, D, s0)
    for ch in (1, 7, chunk, 64):
        yc, sc = ssd_chunked(x, dt, A, B, C, D, s0, ch)
        agree(f"ssd chunked (chunk {ch}) vs sequential: y", yc, y, 1e-12)
        agree(f"ssd chunked (chunk {ch}) vs sequential: state", sc, s1, 1e-12)
    # The scan in pieces with the state carried equals the scan in one go.
    ya, sa = ssd_recurrence(x[:, :20], dt[:, :20], A, B[:, :20], C[:, :20], D, s0)
    yb, sb = ssd_recurrence(x[:, 20:], dt[:, 20:], A, B[:, 20:], C[:, 20:], D, sa)
    agree("ssd in two pieces vs one", torch.cat([ya, yb], 1), y, 1e-13)
    save(out, "ssd_scan.safetensors",
         {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "state_in": s0, "y": y, "state_out": s1},
         {"chunk": chunk})


def attention_cases(out, gen):
    print("Attention")
    nb, l, H, Hkv, p = 2, 23, 4, 2, 8
    q = torch.randn(nb, l, H, p, generator=gen)
    k = torch.randn(nb, l, Hkv, p, generator=gen)
    v = torch.randn(nb, l, Hkv, p, generator=gen)
    kr = k.repeat_interleave(H // Hkv, dim=2)
    vr = v.repeat_interleave(H // Hkv, dim=2)
    # Causal linear attention: (q kᵀ ∘ tril) v.
    scores = torch.einsum("bthp,bshp->bhts", q, kr)
    lin = torch.einsum("bhts,bshp->bthp", scores * torch.tril(torch.ones(l, l)), vr)
    ys, _ = ssd_recurrence(vr, torch.ones(nb, l, H), torch.zeros(H), kr, q, None, None)
    agree("linear attention vs Mamba-2 recurrence with A=0, dt=1", ys, lin, 1e-13)
    save(out, "linear_attention.safetensors", {"q": q, "k": k, "v": v, "out": lin}, {})

    scale = 1 / math.sqrt(p)
    res = {"q": q, "k": k, "v": v}
    for causal in (True, False):
        s = scale * scores
        if causal:
            s = s.masked_fill(~torch.tril(torch.ones(l, l, dtype=torch.bool)), float("-inf"))
        o = torch.einsum("bhts,bshp->bthp", torch.softmax(s, dim=-1), vr)
        sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), kr.transpose(1, 2), vr.transpose(1, 2),
                                              is_causal=causal, scale=scale).transpose(1, 2)
        agree(f"softmax attention (causal={causal}) vs scaled_dot_product_attention", o, sdpa, 1e-13)
        res["out_causal" if causal else "out_full"] = o
    save(out, "softmax_attention.safetensors", res, {"scale": repr(scale)})


def rope_tables(l, rot, theta, pos0):
    inv = theta ** (-torch.arange(0, rot, 2, dtype=F64) / rot)
    ang = torch.arange(pos0, pos0 + l, dtype=F64)[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos(), emb.sin()


def rope(x, rot, theta, pos0):
    """x [b,l,h,p]: rotate-half on the first rot dims."""
    nb, l, h, p = x.shape
    cos, sin = rope_tables(l, rot, theta, pos0)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    xr, xp = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
    return torch.cat([xr * cos + rotated * sin, xp], dim=-1)


def rope_cases(out, gen):
    print("RoPE")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_rope
    from transformers.models.phi.modeling_phi import apply_rotary_pos_emb as phi_rope

    x_full = torch.randn(2, 11, 3, 16, generator=gen)
    full = rope(x_full, 16, 1e4, 0)
    cos, sin = rope_tables(11, 16, 1e4, 0)
    q = x_full.transpose(1, 2)  # HF layout [b,h,l,p]
    hf, _ = llama_rope(q, q, cos[None], sin[None])
    agree("rope full vs transformers llama apply_rotary_pos_emb", full, hf.transpose(1, 2), 1e-14)

    # Phi-2: 80-dim heads, rotary on the first 32 (partial_rotary_factor 0.4), from position 5.
    x_part = torch.randn(1, 9, 2, 80, generator=gen)
    part = rope(x_part, 32, 1e4, 5)
    cos, sin = rope_tables(9, 32, 1e4, 5)
    q = x_part.transpose(1, 2)
    try:
        hf, _ = phi_rope(q, q, cos[None], sin[None])  # newer versions slice the rotary part themselves
        if hf.shape != q.shape:
            raise ValueError(f"shape {tuple(hf.shape)}")
        path = "whole head"
    except Exception as exc:  # older versions take only the rotary part
        print(f"  (phi apply_rotary_pos_emb on the whole head failed: {exc}; slicing as PhiAttention does)")
        r, _ = phi_rope(q[..., :32], q[..., :32], cos[None], sin[None])
        hf = torch.cat([r, q[..., 32:]], dim=-1)
        path = "sliced"
    agree(f"rope partial vs transformers phi apply_rotary_pos_emb ({path})", part, hf.transpose(1, 2), 1e-14)

    x_big = torch.randn(1, 4, 2, 64, generator=gen)
    big = rope(x_big, 64, 1e6, 4000)
    save(out, "rope.safetensors",
         {"x_full": x_full, "out_full": full, "x_partial": x_part, "out_partial": part, "x_far": x_big, "out_far": big},
         {"full": "rot=16 theta=10000 pos0=0", "partial": "rot=32 theta=10000 pos0=5", "far": "rot=64 theta=1000000 pos0=4000"})


def norm_act_cases(out, gen):
    print("Norms, activations, conv")
    from transformers.activations import NewGELUActivation

    x = 3 + torch.randn(3, 5, 40, generator=gen)
    w = 0.5 + torch.rand(40, generator=gen)
    b = torch.randn(40, generator=gen) * 0.1
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    ln = (x - mean) / torch.sqrt(var + 1e-5) * w + b
    agree("layernorm vs torch layer_norm", ln, F.layer_norm(x, (40,), w, b, 1e-5), 1e-14)
    rms = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    agree("rmsnorm vs torch rms_norm", rms, F.rms_norm(x, (40,), w, 1e-6), 1e-14)
    z = torch.randn(3, 5, 40, generator=gen)
    grms = gated_rmsnorm(x, z, w, 10, 1e-5)

    a = 6 * torch.randn(1000, generator=gen)
    gelu_erf = 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))
    agree("gelu erf vs torch gelu", gelu_erf, F.gelu(a), 1e-14)
    gelu_tanh = 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))
    agree("gelu tanh vs torch gelu(approximate=tanh)", gelu_tanh, F.gelu(a, approximate="tanh"), 1e-14)
    agree("gelu tanh vs transformers gelu_new", gelu_tanh, NewGELUActivation()(a), 1e-14)
    si = silu(a)
    agree("silu vs torch silu", si, F.silu(a), 1e-14)
    sp_in = 40 * torch.rand(1000, generator=gen) - 20 + torch.linspace(-10, 10, 1000)
    sp = softplus(sp_in)
    agree("softplus vs torch softplus", sp, F.softplus(sp_in), 1e-14)

    u = torch.randn(2, 13, 6, generator=gen)
    cw = torch.rand(6, 4, generator=gen) - 0.5
    cb = torch.rand(6, generator=gen) - 0.5
    conv = causal_conv1d(u, cw, cb, True)
    tconv = F.conv1d(u.transpose(1, 2), cw[:, None, :], cb, padding=3, groups=6)[..., :13].transpose(1, 2)
    agree("causal conv1d + silu vs torch conv1d", conv, F.silu(tconv), 1e-14)

    save(out, "norms_activations.safetensors",
         {"x": x, "weight": w, "bias": b, "layernorm": ln, "rmsnorm": rms, "z": z, "gated_rmsnorm": grms,
          "a": a, "gelu_erf": gelu_erf, "gelu_tanh": gelu_tanh, "silu": si, "softplus_in": sp_in, "softplus": sp,
          "conv_u": u, "conv_weight": cw, "conv_bias": cb, "conv_silu": conv},
         {"layernorm_eps": "1e-05", "rmsnorm_eps": "1e-06", "gated_group": "10", "gated_eps": "1e-05"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=20261128)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    gen = torch.Generator().manual_seed(args.seed)
    for case in (mixer_cases, ssd_cases, attention_cases, rope_cases, norm_act_cases):
        try:
            case(args.out, gen)
        except Exception as exc:  # report every case, fail at the end
            import traceback
            traceback.print_exc()
            failures.append(f"{case.__name__}: {exc!r}")
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        sys.exit(1)
    print("all cross-checks agree")


if __name__ == "__main__":
    main()
