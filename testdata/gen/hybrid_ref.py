#!/usr/bin/env python3
"""Float64 reference forward of matsurgery's hybrid fixtures, written from SPEC §2-3 in plain torch.

For each hybrid fixture (testdata/fixtures/<family>-tiny-h25, made by
`matsurgery convert --ratio 0.25 --seed 1`) it runs the whole TinyLLaVA forward in float64 on the CPU:
SigLIP tower (hidden_states[vision_feature_layer], no post_layernorm, "patch" drops row 0), mlp2x_gelu
connector, splicing at the -200 placeholder, decoder layers (attention layers as the teacher's; the layers
mamba_config.json does not list use the Mamba-2 mixer of SPEC §3 in place of attention), final norm, lm_head.
It uses neither transformers nor mamba_ssm: every block is written out below.

The inputs (pixel_values, input_ids) are the teacher goldens' (testdata/golden/model/<family>.safetensors).
As a check of everything but the mixer, the same code runs the teacher fixture first and its logits are
compared with the teacher golden (the real transformers forward); the script stops if they disagree.

Writes <out>/<family>-h25.safetensors with pixel_values, input_ids, image_features, inputs_embeds,
llm.layer_output.{0..n-1}, llm.mixer_output.N (each Mamba layer's mixer output), llm.final_norm, logits.

    PYTHONUNBUFFERED=1 python3 testdata/gen/hybrid_ref.py --out /tmp/h25
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)

FAMILIES = {"phi": "phi-tiny", "qwen2": "qwen2-tiny"}
IMAGE_TOKEN = -200

# --------------------------------------------------------------------------------------------
# safetensors, read and written by hand (header: u64 length, JSON, then the bytes).
# --------------------------------------------------------------------------------------------


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = bytearray(data[b:e])
        shape = info["shape"]
        dt = info["dtype"]
        if dt == "BF16":
            bits = torch.frombuffer(raw, dtype=torch.int16).to(torch.int32) & 0xFFFF
            t = (bits << 16).view(torch.float32)
        elif dt == "F16":
            t = torch.frombuffer(raw, dtype=torch.float16)
        elif dt == "F32":
            t = torch.frombuffer(raw, dtype=torch.float32)
        elif dt == "F64":
            t = torch.frombuffer(raw, dtype=torch.float64)
        elif dt == "I64":
            t = torch.frombuffer(raw, dtype=torch.int64)
        else:
            raise ValueError("%s: tensor %s has dtype %s" % (path, name, dt))
        t = t.reshape(shape) if shape else t.reshape(())
        out[name] = t.clone() if dt == "I64" else t.to(torch.float64)
    return out


def read_checkpoint(d):
    single = os.path.join(d, "model.safetensors")
    if os.path.exists(single):
        return read_safetensors(single)
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        index = json.load(f)
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(read_safetensors(os.path.join(d, shard)))
    missing = set(index["weight_map"]) - set(out)
    if missing:
        raise ValueError("%s: index names tensors no shard holds: %s" % (d, sorted(missing)[:5]))
    return out


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        if t.dtype == torch.float64:
            dt = "F64"
        elif t.dtype == torch.int64:
            dt = "I64"
        else:
            raise ValueError("unexpected dtype %s for %s" % (t.dtype, name))
        raw = t.numpy().tobytes()  # little-endian on every machine this runs on
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Blocks.
# --------------------------------------------------------------------------------------------


def linear(x, W, b=None):
    y = x @ W.T
    return y + b if b is not None else y


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def act_fn(name):
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return gelu_tanh
    if name == "gelu":
        return gelu_erf
    if name in ("silu", "swish"):
        return F.silu
    raise ValueError("activation %r" % name)


def softmax_attention(q, k, v, scale, causal):
    """q [L,H,P], k/v [L,Hkv,P]; head h reads kv head h // (H/Hkv)."""
    L, H, P = q.shape
    rep = H // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    s = torch.einsum("lhp,mhp->hlm", q, k) * scale
    if causal:
        mask = torch.ones(L, L, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    w = torch.softmax(s, dim=-1)
    return torch.einsum("hlm,mhp->lhp", w, v)


def rope(x, rot, theta):
    """Rotate-half RoPE on the first rot dims of x [L,H,P], positions 0..L-1, angles in float64."""
    L = x.shape[0]
    inv = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    xr, xp = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
    return torch.cat([xr * cos + rotated * sin, xp], dim=-1)


# --------------------------------------------------------------------------------------------
# Vision tower and connector.
# --------------------------------------------------------------------------------------------


def vision_features(W, cfg, pixels):
    vc = cfg["vision_config"]
    d, heads = vc["hidden_size"], vc["num_attention_heads"]
    eps = vc.get("layer_norm_eps", 1e-6)
    act = act_fn(vc.get("hidden_act", "gelu_pytorch_tanh"))
    n_layers = vc.get("num_hidden_layers", 12)
    p = "vision_tower._vision_tower.vision_model."
    pw, pb = W[p + "embeddings.patch_embedding.weight"], W[p + "embeddings.patch_embedding.bias"]
    x = F.conv2d(pixels, pw, pb, stride=vc["patch_size"])  # [1,d,g,g]
    x = x.flatten(2).transpose(1, 2)[0]  # [N,d]
    x = x + W[p + "embeddings.position_embedding.weight"]
    hs = [x]
    hd = d // heads
    for i in range(n_layers):
        lp = p + "encoder.layers.%d." % i
        g = lambda n: W[lp + n]
        r = x
        h = layer_norm(x, g("layer_norm1.weight"), g("layer_norm1.bias"), eps)
        q = linear(h, g("self_attn.q_proj.weight"), g("self_attn.q_proj.bias")).reshape(-1, heads, hd)
        k = linear(h, g("self_attn.k_proj.weight"), g("self_attn.k_proj.bias")).reshape(-1, heads, hd)
        v = linear(h, g("self_attn.v_proj.weight"), g("self_attn.v_proj.bias")).reshape(-1, heads, hd)
        a = softmax_attention(q, k, v, hd ** -0.5, causal=False).reshape(-1, d)
        x = r + linear(a, g("self_attn.out_proj.weight"), g("self_attn.out_proj.bias"))
        r = x
        h = layer_norm(x, g("layer_norm2.weight"), g("layer_norm2.bias"), eps)
        h = linear(act(linear(h, g("mlp.fc1.weight"), g("mlp.fc1.bias"))), g("mlp.fc2.weight"), g("mlp.fc2.bias"))
        x = r + h
        hs.append(x)
    feats = hs[cfg.get("vision_feature_layer", -2)]
    strategy = cfg.get("vision_feature_select_strategy", "patch")
    if strategy == "patch":
        feats = feats[1:]
    elif strategy != "cls_patch":
        raise ValueError("strategy %r" % strategy)
    c = "connector._connector."
    h = gelu_erf(linear(feats, W[c + "0.weight"], W[c + "0.bias"]))
    return linear(h, W[c + "2.weight"], W[c + "2.bias"])


# --------------------------------------------------------------------------------------------
# The Mamba-2 mixer (SPEC §3), sequential recurrence in float64.
# --------------------------------------------------------------------------------------------


def mamba_mixer(W, pre, mc, h):
    """h [L,d] -> [L,d]."""
    L = h.shape[0]
    N = P = mc["ssm_cfg"]["d_state"]
    G = mc["ssm_cfg"]["ngroups"]
    d_inner, d_xb = mc["d_inner"], mc["d_xb"]
    H = d_inner // P
    conv_dim = 2 * d_xb + G * N
    in_proj = W[pre + "in_proj.weight"]
    assert in_proj.shape[0] == d_inner + conv_dim + H, (in_proj.shape, d_inner, conv_dim, H)
    zxbcdt = linear(h, in_proj, W.get(pre + "in_proj.bias"))
    z, xBC, dt = torch.split(zxbcdt, [d_inner, conv_dim, H], dim=-1)

    # Depthwise causal conv, kernel K, bias; w[:, K-1] multiplies the current token; then SiLU.
    cw = W[pre + "conv1d.weight"][:, 0, :]  # [conv_dim, K]
    K = cw.shape[1]
    cb = W.get(pre + "conv1d.bias")
    u = torch.cat([torch.zeros(K - 1, conv_dim), xBC], dim=0)
    conv = torch.zeros(L, conv_dim)
    for t in range(L):
        conv[t] = (cw * u[t : t + K].T).sum(-1)
    if cb is not None:
        conv = conv + cb
    xBC = F.silu(conv)

    x, B, C = torch.split(xBC, [d_xb, d_xb, G * N], dim=-1)
    x = x.reshape(L, d_xb // P, P).repeat_interleave(H // (d_xb // P), dim=1)  # [L,H,P]
    B = B.reshape(L, d_xb // N, N).repeat_interleave(G // (d_xb // N), dim=1)  # [L,G,N]
    C = C.reshape(L, G, N)
    dt = F.softplus(dt + W[pre + "dt_bias"])  # [L,H]
    A = -torch.exp(W[pre + "A_log"])  # [H]
    D = W.get(pre + "D")
    rep = H // G
    S = torch.zeros(H, P, N)
    y = torch.zeros(L, H, P)
    for t in range(L):
        for hh in range(H):
            g = hh // rep
            S[hh] = torch.exp(dt[t, hh] * A[hh]) * S[hh] + dt[t, hh] * torch.outer(x[t, hh], B[t, g])
            y[t, hh] = S[hh] @ C[t, g]
            if D is not None:
                y[t, hh] = y[t, hh] + D[hh] * x[t, hh]
    y = y.reshape(L, d_inner)

    # Gated RMSNorm, norm after gate, per group of d_inner/G channels, eps 1e-5.
    yg = (y * F.silu(z)).reshape(L, G, d_inner // G)
    yg = yg / torch.sqrt((yg * yg).mean(-1, keepdim=True) + 1e-5)
    y = yg.reshape(L, d_inner) * W[pre + "norm.weight"]
    return linear(y, W[pre + "out_proj.weight"], W.get(pre + "out_proj.bias"))


# --------------------------------------------------------------------------------------------
# The decoder.
# --------------------------------------------------------------------------------------------


def text_sizes(cfg):
    tc = cfg["text_config"]
    fam = "phi" if "phi" in cfg["llm_model_name_or_path"].lower() else "qwen2"
    d = tc["hidden_size"]
    H = tc.get("num_attention_heads", 32)
    Hkv = tc.get("num_key_value_heads") or H
    P = tc.get("head_dim") or d // H
    theta = tc.get("rope_theta")
    prf = tc.get("partial_rotary_factor")
    rp = tc.get("rope_parameters") or {}
    if theta is None:
        theta = rp.get("rope_theta", 10000.0)
    if prf is None:
        prf = rp.get("partial_rotary_factor", 0.5 if fam == "phi" else 1.0)
    eps = tc.get("layer_norm_eps", 1e-5) if fam == "phi" else tc.get("rms_norm_eps", 1e-6)
    return dict(fam=fam, d=d, H=H, Hkv=Hkv, P=P, rot=int(P * prf), theta=float(theta), eps=eps,
                act=tc.get("hidden_act", "gelu_new" if fam == "phi" else "silu"), layers=tc["num_hidden_layers"])


def attention(W, pre, s, h, phi):
    L = h.shape[0]
    H, Hkv, P = s["H"], s["Hkv"], s["P"]
    q = linear(h, W[pre + "q_proj.weight"], W.get(pre + "q_proj.bias")).reshape(L, H, P)
    k = linear(h, W[pre + "k_proj.weight"], W.get(pre + "k_proj.bias")).reshape(L, Hkv, P)
    v = linear(h, W[pre + "v_proj.weight"], W.get(pre + "v_proj.bias")).reshape(L, Hkv, P)
    q, k = rope(q, s["rot"], s["theta"]), rope(k, s["rot"], s["theta"])
    a = softmax_attention(q, k, v, P ** -0.5, causal=True).reshape(L, H * P)
    o = "dense" if phi else "o_proj"
    return linear(a, W[pre + o + ".weight"], W.get(pre + o + ".bias"))


def decoder(W, cfg, mc, x):
    s = text_sizes(cfg)
    phi = s["fam"] == "phi"
    act = act_fn(s["act"])
    mamba = set()
    if mc is not None:
        mamba = set(range(mc["n_layer"])) - set(mc["attn_layers"])
    outs, mixer_outs = [], {}
    for l in range(s["layers"]):
        lp = "language_model.model.layers.%d." % l
        g = lambda n: W[lp + n]
        if phi:
            h = layer_norm(x, g("input_layernorm.weight"), g("input_layernorm.bias"), s["eps"])
        else:
            h = rms_norm(x, g("input_layernorm.weight"), s["eps"])
        if l in mamba:
            mix = mamba_mixer(W, lp + "mamba.", mc, h)
            mixer_outs[l] = mix
        else:
            mix = attention(W, lp + "self_attn.", s, h, phi)
        if phi:
            mlp = linear(act(linear(h, g("mlp.fc1.weight"), g("mlp.fc1.bias"))), g("mlp.fc2.weight"), g("mlp.fc2.bias"))
            x = x + mix + mlp
        else:
            x = x + mix
            h = rms_norm(x, g("post_attention_layernorm.weight"), s["eps"])
            mlp = linear(act(linear(h, g("mlp.gate_proj.weight"))) * linear(h, g("mlp.up_proj.weight")), g("mlp.down_proj.weight"))
            x = x + mlp
        outs.append(x)
    if phi:
        fn = layer_norm(x, W["language_model.model.final_layernorm.weight"], W["language_model.model.final_layernorm.bias"], s["eps"])
    else:
        fn = rms_norm(x, W["language_model.model.norm.weight"], s["eps"])
    head = W.get("language_model.lm_head.weight", W["language_model.model.embed_tokens.weight"])
    logits = linear(fn, head, W.get("language_model.lm_head.bias"))
    return outs, mixer_outs, fn, logits


def forward(d, pixels, ids):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    mc = None
    if os.path.exists(os.path.join(d, "mamba_config.json")):
        with open(os.path.join(d, "mamba_config.json")) as f:
            mc = json.load(f)
    W = read_checkpoint(d)
    img = vision_features(W, cfg, pixels)
    emb = W["language_model.model.embed_tokens.weight"]
    pieces = []
    for t in ids.tolist():
        pieces.append(img if t == cfg.get("image_token_index", IMAGE_TOKEN) else emb[t][None])
    x = torch.cat(pieces, dim=0)
    outs, mixer_outs, fn, logits = decoder(W, cfg, mc, x)
    return dict(img=img, emb=x, outs=outs, mixer=mixer_outs, final=fn, logits=logits, mc=mc)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--fixtures", default="testdata/fixtures")
    ap.add_argument("--golden", default="testdata/golden/model")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print("torch %s" % torch.__version__)
    for fam, teacher in FAMILIES.items():
        g = read_safetensors(os.path.join(args.golden, fam + ".safetensors"))
        pixels, ids = g["pixel_values"], g["input_ids"][0]

        # Everything but the mixer, against the real transformers forward of the teacher.
        ref = forward(os.path.join(args.fixtures, teacher), pixels, ids)
        checks = {
            "image_features": rel(ref["img"], g["image_features"][0]),
            "inputs_embeds": rel(ref["emb"], g["inputs_embeds"][0]),
            "logits": rel(ref["logits"], g["logits"][0]),
        }
        for l, o in enumerate(ref["outs"]):
            checks["layer_output.%d" % l] = rel(o, g["llm.layer_output.%d" % l][0])
        worst = max(checks.values())
        print("%s teacher vs transformers golden: worst relative error %.3g (logits %.3g)" % (fam, worst, checks["logits"]))
        if not worst < 1e-6:
            print("  " + ", ".join("%s=%.3g" % kv for kv in sorted(checks.items())))
            sys.exit("%s: the hand-written forward disagrees with the transformers golden" % fam)

        hdir = os.path.join(args.fixtures, teacher + "-h25")
        out = forward(hdir, pixels, ids)
        mamba_layers = sorted(out["mixer"])
        if not mamba_layers:
            sys.exit("%s: %s has no Mamba layers" % (fam, hdir))
        tensors = {
            "pixel_values": pixels,
            "input_ids": ids[None].clone(),
            "image_features": out["img"][None],
            "inputs_embeds": out["emb"][None],
            "llm.final_norm": out["final"][None],
            "logits": out["logits"][None],
        }
        for l, o in enumerate(out["outs"]):
            tensors["llm.layer_output.%d" % l] = o[None]
        for l, o in out["mixer"].items():
            tensors["llm.mixer_output.%d" % l] = o[None]
        files = sorted(f for f in os.listdir(hdir) if f.endswith((".json", ".safetensors")))
        meta = {
            "family": fam,
            "fixture": os.path.basename(hdir),
            "mamba_layers": ",".join(str(l) for l in mamba_layers),
            "torch_version": torch.__version__,
            "dtype": "float64 forward of the weights as stored, written from SPEC sections 2-3 (no transformers, no mamba_ssm)",
            "teacher_check_worst_relative_error": repr(worst),
            "fixture_sha256": json.dumps({f: sha256_of(os.path.join(hdir, f)) for f in files}, sort_keys=True),
        }
        path = os.path.join(args.out, fam + "-h25.safetensors")
        write_safetensors(path, tensors, meta)
        print("%s: wrote %s (%d bytes): %d tokens, Mamba layers %s, max |logit| %.4g, logits differ from the teacher's by %.3g (relative)"
              % (fam, path, os.path.getsize(path), out["emb"].shape[0], mamba_layers, float(out["logits"].abs().max()),
                 rel(out["logits"], ref["logits"])))


if __name__ == "__main__":
    main()
