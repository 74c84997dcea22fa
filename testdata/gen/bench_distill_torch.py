"""The PyTorch twin of one `matsurgery distill` update, at full size, on
synthetic weights, timed on the GPU: what the same step costs when written
the way a PyTorch user would write it, side by side with the Go trainer.

Models (random weights, bf16, shapes of TinyLLaVA-Phi-2-SigLIP-3.1B):
  vision    transformers SiglipVisionModel, so400m-patch14-384 shapes (27
            layers, 1152 wide); features = hidden_states[-2] without row 0
            (728 rows; the recipe's "patch" strategy, SPEC §2). Frozen and
            the same tower for teacher and student: run once a sample.
  connector mlp2x_gelu (1152 → 2560, exact GELU, 2560 → 2560): the
            teacher's frozen (bf16), the student's a trainable fp32 copy.
  teacher   transformers PhiForCausalLM, Phi-2 shapes (32 layers, 2560,
            32 heads of 80, MLP 10240, vocab 51200, partial rotary 0.4),
            SDPA attention, eval mode.
  student   the same PhiForCausalLM sharing every frozen module with the
            teacher (no second copy of the weights), with the attention of
            layers 0, 4, …, 28 (25%) replaced by a Mamba-2 mixer written in
            torch (in_proj, depthwise causal conv + SiLU, softplus dt, the
            chunked SSD in einsum form with autograd, gated RMSNorm, out_proj;
            SPEC §3), initialised from the attention (V→x, K→B, Q→C,
            dense→out_proj). Train mode: residual dropout 0.1.
            Variant "hf" uses transformers' Mamba2Mixer (its pure-torch
            path; n_groups=32) in place of ours, for timing only (its gated
            norm groups differ from ours).
Step (distill's, SPEC §1): teacher forward (logits, and the inputs and
outputs of the Mamba layers, by hooks); student forward with the logits and,
for each Mamba layer, the layer alone on the teacher's input; loss = KL
(T=1, T², averaged over the rows as distill/loss.go does) + Σ_l ‖S_l − T_l‖₂;
backward; global-norm clip 0.1; AdamW (lr 2e-4, betas 0.9/0.95, decay 0.01
on matrices only, fused). Mixed precision: torch.autocast(bf16) over fp32
trainable parameters (gradients and AdamW in fp32), the SSD and the gated
norm in fp32, frozen weights bf16. Batch 1, sequence 1428 = 40 text tokens,
728 image rows, 660 text tokens; --accum micro-batches an update.

Measured: tokens/s over --steps updates after --warmup (CUDA-synchronised
wall clock), per-phase times of one more update (CUDA events), and
torch.cuda.max_memory_allocated. Before timing, the torch SSD is checked
against the sequential recurrence in float64 (values and gradients).

  PYTHONUNBUFFERED=1 python3 testdata/gen/bench_distill_torch.py [--variants ours,hf] [--steps 5]
  python3 testdata/gen/bench_distill_torch.py --selfcheck   # the SSD check alone (CPU is enough)

Prints one JSON object a line; the last is the summary.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

PHI = dict(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
           num_attention_heads=32, num_key_value_heads=32, hidden_act="gelu_new", layer_norm_eps=1e-5,
           partial_rotary_factor=0.4, rope_theta=10000.0, max_position_embeddings=2048,
           resid_pdrop=0.1, embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False)
SIGLIP = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
              image_size=384, patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
MAMBA_LAYERS = list(range(0, 32, 4))  # the recipe's 25%: 0, 4, …, 28
PREFIX, IMAGE_ROWS, SUFFIX = 40, 728, 660  # 1428 rows


def make_tiny():
    """--tiny: the same program at toy sizes (a functional check in seconds,
    on the CPU too)."""
    global MAMBA_LAYERS, PREFIX, IMAGE_ROWS, SUFFIX
    PHI.update(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=8, num_attention_heads=4,
               num_key_value_heads=4, partial_rotary_factor=0.5, max_position_embeddings=256)
    SIGLIP.update(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=7)
    MAMBA_LAYERS = [0, 4]
    PREFIX, IMAGE_ROWS, SUFFIX = 5, 15, 20


def sizes():
    d, heads = PHI["hidden_size"], PHI["num_attention_heads"]
    return d, heads, d // heads, PHI["num_key_value_heads"] * (d // heads), SIGLIP["hidden_size"]


def on(device):
    """torch.device as a context manager (torch ≥ 2.0); older torch (a CPU
    smoke test) builds on the CPU."""
    d = torch.device(device)
    return d if hasattr(d, "__enter__") else contextlib.nullcontext()


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def emit(obj):
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------------------
# The chunked SSD (SPEC §3), fp32, differentiable.


def segsum(a):
    """a [..., T] → [..., T, T]: out[i, j] = Σ_{j<k≤i} a_k for j ≤ i, −inf above."""
    T = a.shape[-1]
    cs = torch.cumsum(a, dim=-1)
    d = cs[..., :, None] - cs[..., None, :]
    keep = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return d.masked_fill(~keep, -math.inf)


def ssd_chunked(x, dt, A, B, C, chunk):
    """y [b,l,h,p] of S_t = exp(dt·A) S_{t−1} + dt x_t ⊗ B_t, y_t = S_t C_t
    (zero initial state); x [b,l,h,p], dt [b,l,h], A [h], B and C [b,l,h,n]
    (one group a head)."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    pad = (-l) % chunk
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
    c = (l + pad) // chunk
    X = (x * dt[..., None]).reshape(b, c, chunk, h, p)
    a = (dt * A).reshape(b, c, chunk, h).permute(0, 3, 1, 2)  # b h c q
    Bc = B.reshape(b, c, chunk, h, n)
    Cc = C.reshape(b, c, chunk, h, n)
    cs = torch.cumsum(a, dim=-1)
    decay = torch.exp(segsum(a))  # b h c l s
    G = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc)
    y_diag = torch.einsum("bhcls,bcshp->bclhp", G * decay, X)
    to_end = torch.exp(cs[..., -1:] - cs)  # b h c q
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, to_end, X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    across = torch.exp(segsum(F.pad(cs[..., -1], (1, 0))))  # b h c+1 c+1
    entering = torch.einsum("bhzc,bchpn->bzhpn", across, states)[:, :-1]
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, entering, torch.exp(cs))
    return (y_diag + y_off).reshape(b, c * chunk, h, p)[:, :l]


def ssd_sequential(x, dt, A, B, C):
    """The recurrence itself, token by token (the check's reference)."""
    b, l, h, p = x.shape
    S = x.new_zeros(b, h, p, B.shape[-1])
    ys = []
    for t in range(l):
        S = torch.exp(dt[:, t] * A)[..., None, None] * S + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, C[:, t]))
    return torch.stack(ys, dim=1)


def selfcheck(device):
    """Chunked vs sequential SSD in float64, values and gradients (tolerance
    1e-10), and the mixer against the float64 reference (1e-5); returns the
    worst error as a fraction of its tolerance."""
    g = torch.Generator(device="cpu").manual_seed(7)
    b, l, h, p, n, chunk = 2, 45, 3, 5, 4, 16

    def r(*s, lo=-1.0, hi=1.0):
        return (lo + (hi - lo) * torch.rand(*s, generator=g, dtype=torch.float64)).to(device).requires_grad_()

    x, dt, A, B, C = r(b, l, h, p), r(b, l, h, lo=0.01, hi=0.6), r(h, lo=-3, hi=-0.5), r(b, l, h, n), r(b, l, h, n)
    up = torch.randn(b, l, h, p, generator=g, dtype=torch.float64).to(device)
    worst = 0.0
    outs = []
    for fn in (lambda: ssd_chunked(x, dt, A, B, C, chunk), lambda: ssd_sequential(x, dt, A, B, C)):
        y = fn()
        grads = torch.autograd.grad((y * up).sum(), (x, dt, A, B, C))
        outs.append((y.detach(), grads))
    for name, got, want in [("y", outs[0][0], outs[1][0])] + [
            (f"d{v}", outs[0][1][i], outs[1][1][i]) for i, v in enumerate("x dt A B C".split())]:
        e = ((got - want).norm() / want.norm()).item()
        worst = max(worst, e)
        emit({"check": f"ssd chunked vs sequential (float64): {name}", "relerr": e})
    return max(worst / 1e-10, mixer_check(device) / 1e-5)


def mixer_check(device):
    """Our mixer in float32 against kernels_ref.py's float64 formulas (SPEC
    §3, the repository's golden generator), GQA included; relative error."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    saved = torch.get_default_dtype()
    try:
        import kernels_ref as ref
    except ImportError as exc:
        emit({"check": "mixer vs kernels_ref.py", "skipped": str(exc)})
        return 0.0
    finally:
        torch.set_default_dtype(saved)  # kernels_ref makes float64 the default
    worst = 0.0
    g = torch.Generator(device="cpu").manual_seed(3)
    for dxb in (12, 24):
        cfg = dict(d_model=24, nheads=4, headdim=6, d_state=6, ngroups=4, d_xb=dxb, conv_kernel=4, norm_eps=1e-5, chunk=8)
        W = {k: v.to(torch.float64) for k, v in ref.random_mixer_weights(g, cfg).items()}
        hidden = torch.randn(2, 37, 24, generator=g, dtype=torch.float64)
        want = ref.mamba2_mixer(cfg, W, hidden)
        mx = Mamba2Mixer(24, 4, 6, 6, dxb, chunk=8).to(device)
        with torch.no_grad():
            for name, key in (("in_proj", "in_proj"), ("conv_w", "conv1d_weight"), ("conv_b", "conv1d_bias"), ("dt_bias", "dt_bias"),
                              ("A_log", "A_log"), ("D", "D"), ("norm_w", "norm_weight"), ("out_proj", "out_proj")):
                getattr(mx, name).copy_(W[key])
            got = mx(hidden.to(device, torch.float32)).cpu().double()
        e = ((got - want).norm() / want.norm()).item()
        worst = max(worst, e)
        emit({"check": f"mixer (float32) vs kernels_ref.mamba2_mixer (float64), d_xb={dxb}", "relerr": e})
    return worst


# ---------------------------------------------------------------------------
# The Mamba-2 mixer (SPEC §3) and its attention-initialised weights.


class Mamba2Mixer(nn.Module):
    """Our mixer: in_proj rows z | x | B | C | dt; conv over x|B|C; x and B
    repeated to the heads (GQA); gated RMSNorm in groups of headdim."""

    def __init__(self, d, heads, headdim, dstate, dxb, kernel=4, chunk=64, eps=1e-5):
        super().__init__()
        self.d, self.h, self.p, self.n, self.dxb, self.k, self.chunk, self.eps = d, heads, headdim, dstate, dxb, kernel, chunk, eps
        self.dinner = heads * headdim
        self.convdim = 2 * dxb + self.dinner
        f32 = torch.float32  # master weights, whatever the default dtype
        self.in_proj = nn.Parameter(torch.empty(2 * self.dinner + 2 * dxb + heads, d, dtype=f32))
        self.conv_w = nn.Parameter(torch.empty(self.convdim, 1, kernel, dtype=f32))
        self.conv_b = nn.Parameter(torch.empty(self.convdim, dtype=f32))
        self.dt_bias = nn.Parameter(torch.empty(heads, dtype=f32))
        self.A_log = nn.Parameter(torch.empty(heads, dtype=f32))
        self.D = nn.Parameter(torch.empty(heads, dtype=f32))
        self.norm_w = nn.Parameter(torch.empty(self.dinner, dtype=f32))
        self.out_proj = nn.Parameter(torch.empty(d, self.dinner, dtype=f32))

    @torch.no_grad()
    def init_from_attention(self, q, k, v, o, gen):
        """V→x, K→B, Q→C, dense→out_proj; the rest Mamba-2's usual init."""
        dev = self.in_proj.device

        def u(lo, hi, *shape):
            return lo + (hi - lo) * torch.rand(*shape, generator=gen, device=dev)

        bound = 1 / math.sqrt(self.d)
        rows = [u(-bound, bound, self.dinner, self.d), v.float(), k.float(), q.float(), u(-bound, bound, self.h, self.d)]
        self.in_proj.copy_(torch.cat(rows, dim=0))
        self.out_proj.copy_(o.float())
        self.conv_w.copy_(u(-0.5, 0.5, self.convdim, 1, self.k))
        self.conv_b.copy_(u(-0.5, 0.5, self.convdim))
        dt = torch.exp(u(math.log(1e-3), math.log(1e-1), self.h)).clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(u(1, 16, self.h)))
        self.D.fill_(1)
        self.norm_w.fill_(1)

    def forward(self, hidden):
        b, l, _ = hidden.shape
        h, p, n = self.h, self.p, self.n
        zxbcdt = F.linear(hidden, self.in_proj)
        z, xbc, dt = torch.split(zxbcdt, [self.dinner, self.convdim, h], dim=-1)
        xbc = F.conv1d(xbc.transpose(1, 2), self.conv_w, self.conv_b, padding=self.k - 1, groups=self.convdim)[..., :l]
        xbc = F.silu(xbc.transpose(1, 2))
        x, B, C = torch.split(xbc, [self.dxb, self.dxb, self.dinner], dim=-1)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            kv = self.dxb // p
            x = x.float().reshape(b, l, kv, p).repeat_interleave(h // kv, dim=2)
            B = B.float().reshape(b, l, self.dxb // n, n).repeat_interleave(h // (self.dxb // n), dim=2)
            C = C.float().reshape(b, l, h, n)
            dt = F.softplus(dt.float() + self.dt_bias)
            A = -torch.exp(self.A_log.float())
            y = ssd_chunked(x, dt, A, B, C, self.chunk) + self.D[:, None] * x
            gated = (y.reshape(b, l, self.dinner) * F.silu(z.float())).reshape(b, l, self.dinner // p, p)
            gated = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + self.eps)
            y = gated.reshape(b, l, self.dinner) * self.norm_w
        return F.linear(y, self.out_proj)


class HFMixer(nn.Module):
    """transformers' Mamba2Mixer (pure-torch path) at the same sizes."""

    def __init__(self, ours):
        super().__init__()
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HF

        hc = Mamba2Config(num_heads=ours.h, head_dim=ours.p, hidden_size=ours.d, expand=ours.dinner // ours.d,
                          state_size=ours.n, n_groups=ours.dxb // ours.n, conv_kernel=ours.k, use_conv_bias=True,
                          use_bias=False, chunk_size=ours.chunk, layer_norm_epsilon=ours.eps, hidden_act="silu",
                          num_hidden_layers=1)
        if getattr(hc, "layer_types", None) is None:
            hc.layer_types = ["mamba"]
        self.m = HF(hc, layer_idx=0).to(device=ours.in_proj.device, dtype=torch.float32)
        with torch.no_grad():
            self.m.in_proj.weight.copy_(ours.in_proj)
            self.m.conv1d.weight.copy_(ours.conv_w)
            self.m.conv1d.bias.copy_(ours.conv_b)
            self.m.dt_bias.copy_(ours.dt_bias)
            self.m.A_log.copy_(ours.A_log)
            self.m.D.copy_(ours.D)
            self.m.norm.weight.copy_(ours.norm_w)
            self.m.out_proj.weight.copy_(ours.out_proj)
        self.run = getattr(self.m, "torch_forward", None) or self.m.forward

    def forward(self, hidden):
        return self.run(hidden)


class AttentionSlot(nn.Module):
    """Stands where PhiDecoderLayer calls self_attn: takes whatever the
    decoder passes, runs the mixer on hidden_states, and returns as many
    values as the attention it replaces did (probed on the teacher)."""

    def __init__(self, mixer, arity):
        super().__init__()
        self.mixer, self.arity = mixer, arity

    def forward(self, *args, **kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        out = self.mixer(hidden)
        return out if self.arity == 0 else (out,) + (None,) * (self.arity - 1)


def first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


# ---------------------------------------------------------------------------
# Building the models.


def build(dev):
    from transformers import PhiConfig, PhiForCausalLM, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = PhiConfig(**PHI)
    cfg._attn_implementation = "sdpa"
    vcfg = SiglipVisionConfig(**SIGLIP)
    vcfg._attn_implementation = "sdpa"
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with on(dev):
            teacher = PhiForCausalLM(cfg)
            vision = SiglipVisionModel(vcfg)
            d, _, _, _, vd = sizes()
            conn = nn.Sequential(nn.Linear(vd, d), nn.GELU(), nn.Linear(d, d))
    finally:
        torch.set_default_dtype(saved)
    for m in (teacher, vision, conn):
        m.eval().requires_grad_(False)
    rot = teacher.model.rotary_emb.inv_freq.numel() * 2 if hasattr(teacher.model, "rotary_emb") else None
    emit({"built": "teacher", "params": sum(p.numel() for p in teacher.parameters()),
          "vision_params": sum(p.numel() for p in vision.parameters()), "rotary_dims": rot,
          "attn": getattr(cfg, "_attn_implementation", None)})
    return cfg, teacher, vision, conn


def probe_attention_arity(teacher, dev):
    """How many values the teacher's attention returns (0: a bare tensor)."""
    seen = []
    h = teacher.model.layers[1].self_attn.register_forward_hook(
        lambda m, a, out: seen.append(len(out) if isinstance(out, (tuple, list)) else 0))
    with torch.no_grad():
        teacher(inputs_embeds=torch.zeros(1, 8, sizes()[0], device=dev, dtype=torch.bfloat16),
                position_ids=torch.arange(8, device=dev)[None], use_cache=False)
    h.remove()
    return seen[0]


def build_student(cfg, teacher, conn, variant, dev):
    """A PhiForCausalLM whose frozen modules are the teacher's, with mixers
    in the Mamba layers, and a trainable fp32 connector."""
    from transformers import PhiForCausalLM

    arity = probe_attention_arity(teacher, dev)
    with on("meta"):
        student = PhiForCausalLM(cfg)
    sm, tm = student.model, teacher.model
    sm.embed_tokens, sm.final_layernorm, student.lm_head = tm.embed_tokens, tm.final_layernorm, teacher.lm_head
    if hasattr(tm, "rotary_emb"):
        sm.rotary_emb = tm.rotary_emb
    gen = torch.Generator(device=dev).manual_seed(1)
    for i, (sl, tl) in enumerate(zip(sm.layers, tm.layers)):
        sl.input_layernorm, sl.mlp = tl.input_layernorm, tl.mlp
        if i not in MAMBA_LAYERS:
            sl.self_attn = tl.self_attn
            continue
        a = tl.self_attn
        with on(dev):
            d, heads, hd, dxb, _ = sizes()
            mixer = Mamba2Mixer(d, heads, hd, hd, dxb)
        mixer.init_from_attention(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.dense.weight, gen)
        sl.self_attn = AttentionSlot(HFMixer(mixer) if variant == "hf" else mixer, arity)
    left = [n for n, t in list(student.named_parameters()) + list(student.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"student tensors left on the meta device: {left[:5]}")
    student.train()
    d, _, _, _, vd = sizes()
    sconn = nn.Sequential(nn.Linear(vd, d), nn.GELU(), nn.Linear(d, d)).to(dev, torch.float32)
    sconn.load_state_dict({k: v.float() for k, v in conn.state_dict().items()})
    trainable = [p for m in [sl.self_attn for i, sl in enumerate(sm.layers) if i in MAMBA_LAYERS] + [sconn]
                 for p in m.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    return student, sconn, trainable, arity


# ---------------------------------------------------------------------------
# One update.


class Step:
    def __init__(self, teacher, vision, conn, student, sconn, trainable, dev, accum, seed):
        self.teacher, self.vision, self.conn, self.student, self.sconn = teacher, vision, conn, student, sconn
        self.trainable, self.dev, self.accum = trainable, dev, accum
        decay = [p for p in trainable if p.dim() >= 2]
        rest = [p for p in trainable if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}]
        try:
            self.opt = torch.optim.AdamW(groups, lr=2e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
            self.fused = True
        except (TypeError, RuntimeError):
            self.opt = torch.optim.AdamW(groups, lr=2e-4, betas=(0.9, 0.95), eps=1e-8)
            self.fused = False
        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.captured = {}
        self.hooks = []
        for l in MAMBA_LAYERS:
            layer = teacher.model.layers[l]
            try:
                self.hooks.append(layer.register_forward_pre_hook(self._pre(l), with_kwargs=True))
            except TypeError:  # torch < 2.0: positional arguments only
                self.hooks.append(layer.register_forward_pre_hook(self._pre(l)))
            self.hooks.append(layer.register_forward_hook(self._post(l)))
        self.events = None

    def _pre(self, l):
        def hook(mod, args, kwargs=None):
            self.captured[("in", l)] = kwargs["hidden_states"] if kwargs and "hidden_states" in kwargs else args[0]
        return hook

    def _post(self, l):
        def hook(mod, args, out):
            self.captured[("out", l)] = first(out)
        return hook

    def sample(self):
        ids = torch.randint(0, PHI["vocab_size"], (1, PREFIX + SUFFIX), device=self.dev, generator=self.gen)
        side = SIGLIP["image_size"]
        px = torch.rand(1, 3, side, side, device=self.dev, generator=self.gen).mul_(2).sub_(1).to(torch.bfloat16)
        return ids, px

    def mark(self, name):
        if self.events is not None and self.dev.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.events.append((name, e))

    def splice(self, ids, img):
        tok = self.teacher.model.embed_tokens(ids)
        return torch.cat([tok[:, :PREFIX], img.to(tok.dtype), tok[:, PREFIX:]], dim=1)

    def micro(self):
        ids, px = self.sample()
        L = PREFIX + IMAGE_ROWS + SUFFIX
        pos = torch.arange(L, device=self.dev)[None]
        self.mark("data")
        with torch.no_grad():
            hs = self.vision(pixel_values=px, output_hidden_states=True).hidden_states
            feats = hs[-2][:, 1:]  # 728 rows
            assert feats.shape[1] == IMAGE_ROWS, feats.shape
            self.mark("vision")
            self.captured.clear()
            t_logits = self.teacher(inputs_embeds=self.splice(ids, self.conn(feats)), position_ids=pos, use_cache=False).logits
            t_in = {l: self.captured[("in", l)] for l in MAMBA_LAYERS}
            t_out = {l: self.captured[("out", l)] for l in MAMBA_LAYERS}
            self.mark("teacher")
        with torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16):
            emb = self.splice(ids, self.sconn(feats.float()))
            s_logits = self.student(inputs_embeds=emb, position_ids=pos, use_cache=False).logits
            pe = self.student.model.rotary_emb(emb, pos)  # unused by the mixers; what a decoder layer is given
            branch = {l: first(self.student.model.layers[l](t_in[l], attention_mask=None, position_ids=pos, position_embeddings=pe))
                      for l in MAMBA_LAYERS}
        rows = s_logits.shape[1]
        kl = F.kl_div(F.log_softmax(s_logits.float(), dim=-1), F.log_softmax(t_logits.float(), dim=-1),
                      reduction="sum", log_target=True) / rows
        l2 = sum((branch[l].float() - t_out[l].float()).norm() for l in MAMBA_LAYERS)
        loss = kl + l2
        self.mark("student forward + loss")
        (loss / self.accum).backward()
        self.mark("backward")
        return kl.detach(), l2.detach()

    def update(self, timed=False):
        self.events = [] if timed else None
        self.opt.zero_grad(set_to_none=False)
        kls, l2s = [], []
        for _ in range(self.accum):
            kl, l2 = self.micro()
            kls.append(kl)
            l2s.append(l2)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, 0.1)
        self.mark("clip")
        self.opt.step()
        self.mark("adamw")
        phases = None
        if timed and self.dev.type == "cuda":
            torch.cuda.synchronize()
            phases = {}
            for (_, a), (name, b) in zip(self.events, self.events[1:]):
                phases[name] = phases.get(name, 0.0) + a.elapsed_time(b)
            phases = {k: round(v, 2) for k, v in phases.items()}
        return torch.stack(kls).mean(), torch.stack(l2s).mean(), norm, phases


def run_variant(variant, cfg, teacher, vision, conn, dev, args):
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    student, sconn, trainable, arity = build_student(cfg, teacher, conn, variant, dev)
    n_train = sum(p.numel() for p in trainable)
    step = Step(teacher, vision, conn, student, sconn, trainable, dev, args.accum, seed=3)
    for _ in range(max(1, args.warmup)):
        kl, l2, norm, _ = step.update()
    dead = [i for i, p in enumerate(trainable) if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    if dead:
        raise RuntimeError(f"trainable tensors {dead} of {len(trainable)} got no (finite) gradient")
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        kl, l2, norm, _ = step.update()
    sync(dev)
    wall = time.perf_counter() - t0
    _, _, _, phases = step.update(timed=True)
    tokens = args.steps * args.accum * (PREFIX + IMAGE_ROWS + SUFFIX)
    row = {"variant": variant, "tokens_per_update": args.accum * (PREFIX + IMAGE_ROWS + SUFFIX),
           "updates": args.steps, "s_per_update": round(wall / args.steps, 4), "tokens_per_s": round(tokens / wall, 1),
           "phases_ms_one_update": phases, "max_memory_allocated_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None,
           "trainable_params": n_train, "kl": round(kl.item(), 5), "layer_l2": round(l2.item(), 4),
           "grad_norm": round(norm.item(), 4), "adamw_fused": step.fused, "attention_returns": arity}
    for h in step.hooks:
        h.remove()
    del step, student, sconn, trainable
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="ours,hf", help="comma-separated: ours (our torch mixer), hf (transformers' Mamba2Mixer)")
    ap.add_argument("--steps", type=int, default=5, help="timed updates")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--accum", type=int, default=1, help="micro-batches of one sample an update")
    ap.add_argument("--selfcheck", action="store_true", help="only check the SSD (on the GPU when there is one)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: a functional check (runs on the CPU too)")
    args = ap.parse_args()
    if args.tiny:
        make_tiny()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if selfcheck(dev) > 1:
        emit({"error": "the torch SSD or mixer disagrees with its reference (see the checks above)"})
        return 1
    if args.selfcheck:
        return 0
    if dev.type != "cuda" and not args.tiny:
        emit({"error": "no CUDA device: the benchmark needs the GPU (--selfcheck and --tiny run on the CPU)"})
        return 1
    import transformers

    emit({"torch": torch.__version__, "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
          "sequence": PREFIX + IMAGE_ROWS + SUFFIX, "mamba_layers": MAMBA_LAYERS})
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg, teacher, vision, conn = build(dev)
    rows = []
    for variant in args.variants.split(","):
        try:
            rows.append(run_variant(variant, cfg, teacher, vision, conn, dev, args))
        except Exception as exc:  # report and go on with the next variant
            rows.append({"variant": variant, "error": f"{type(exc).__name__}: {exc}"[:2000],
                         "where": traceback.format_exc()[-1500:]})
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        emit(rows[-1])
    emit({"summary": [{k: r.get(k) for k in ("variant", "tokens_per_s", "s_per_update", "max_memory_allocated_GiB", "error")
                       if k in r} for r in rows]})
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
