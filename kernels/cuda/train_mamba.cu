// train_mamba.cu: backward kernels of the Mamba-2 mixer's own operations
// besides the scan's chunk passes (train_mamba_scan.cu): the causal
// convolution, the dt softplus, the gated RMSNorm, the scan's state
// passing between chunks, and the fixed-order sums that turn per-block
// partial parameter gradients into the accumulated ones. Parameter
// gradients never use atomics: each block writes its partial sums (in
// double) and a second kernel adds them in block order, so results do not
// change from run to run. Elementwise maths in double, as the forwards.

#define MB_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

__device__ __forceinline__ double mb_sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }
// d/dv of v·σ(v).
__device__ __forceinline__ double mb_silu_grad(double v) {
    double s = mb_sigmoid(v);
    return s * (1.0 + v * (1.0 - s));
}

// k_mamba_colsum: out[j] += Σ_i part[i·cols + j] over nparts rows, in
// row order, in double.
extern "C" __global__ void k_mamba_colsum(float* out, const double* part, int nparts, int cols) {
    MB_STRIDE(j, cols) {
        double s = 0.0;
        for (int i = 0; i < nparts; i++) s += part[(i64)i * cols + j];
        out[j] = (float)((double)out[j] + s);
    }
}

// ---- causal convolution (forward: k_causal_conv1d in elementwise.cu)
//
// For channel c of u[b, l, C] with weight w[c, 0..K) and pre_t =
// bias + Σ_j w[j]·u[t−K+1+j] (out = silu(pre) or pre):
//   dpre_t = dout_t·silu′(pre_t) (or dout_t), du_s = Σ_j w[j]·dpre_{s+K−1−j},
//   dw[j] += Σ_t dpre_t·u[t−K+1+j], dbias += Σ_t dpre_t.
// Thread (channel c, segment sg of seg tokens of one batch row; block
// blockIdx.x = sg·cblocks + channel block) walks its tokens once (and
// K−1 past them, for du), keeping the last K inputs and gradients in
// registers (K ≤ 8; conv_bwd_any recomputes for longer kernels), and
// writes its weight and bias sums to part[sg][c][0..K] (K+1 doubles).

template <int K>
__device__ __forceinline__ void conv_bwd(float* du, double* part, const float* dout, const float* u, const float* w, const float* bias, int L,
                                         int C, int seg, int nsegb, int cblocks, int silu) {
    const int c = (blockIdx.x % cblocks) * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int sg = blockIdx.x / cblocks;
    const i64 b = sg / nsegb;
    const int s0 = (sg % nsegb) * seg, s1 = min(L, s0 + seg);
    const float* ub = u + b * L * C + c;
    const float* gb = dout + b * L * C + c;
    float* db = du + b * L * C + c;
    double wv[K], ring[K], dring[K], accw[K];
    const double bv = bias ? (double)bias[c] : 0.0;
#pragma unroll
    for (int j = 0; j < K; j++) {
        wv[j] = (double)w[(i64)c * K + j];
        // Shifted once before token s0 lands in ring[K−1], ring[j] must
        // hold u at s0 − K + j.
        int t = s0 - K + j;
        ring[j] = (j >= 1 && t >= 0) ? (double)ub[(i64)t * C] : 0.0;
        dring[j] = 0.0;
        accw[j] = 0.0;
    }
    double accb = 0.0;
    for (int t = s0; t < s1 + K - 1; t++) {
#pragma unroll
        for (int j = 0; j < K - 1; j++) ring[j] = ring[j + 1];
        double dp = 0.0;
        if (t < L) {
            ring[K - 1] = (double)ub[(i64)t * C];
            double g = (double)gb[(i64)t * C];
            if (silu) {
                double pre = bv;
#pragma unroll
                for (int j = 0; j < K; j++) pre += wv[j] * ring[j];
                g *= mb_silu_grad(pre);
            }
            dp = g;
        } else {
            ring[K - 1] = 0.0;
        }
        if (t < s1) {
            accb += dp;
#pragma unroll
            for (int j = 0; j < K; j++) accw[j] += dp * ring[j];
        }
#pragma unroll
        for (int j = 0; j < K - 1; j++) dring[j] = dring[j + 1];
        dring[K - 1] = dp; // dring[i] = dpre at token t − K + 1 + i
        const int s = t - K + 1;
        if (s >= s0) {
            double v = 0.0;
#pragma unroll
            for (int j = 0; j < K; j++) v += wv[j] * dring[K - 1 - j];
            db[(i64)s * C] = (float)v;
        }
    }
    if (part) {
        double* pp = part + ((i64)sg * C + c) * (K + 1);
#pragma unroll
        for (int j = 0; j < K; j++) pp[j] = accw[j];
        pp[K] = accb;
    }
}

// dpre at token t of channel c (batch row base pointers), 0 past L.
__device__ __forceinline__ double conv_dpre(const float* ub, const float* gb, const float* w, double bv, int t, int L, int C, int k, int silu) {
    if (t >= L) return 0.0;
    double g = (double)gb[(i64)t * C];
    if (!silu) return g;
    double pre = bv;
    for (int j = 0; j < k; j++) {
        int ts = t - k + 1 + j;
        if (ts >= 0) pre += (double)w[j] * (double)ub[(i64)ts * C];
    }
    return g * mb_silu_grad(pre);
}

// conv_bwd_any: the same for any k, recomputing dpre (k² work a token) and
// accumulating the weight sums in part itself (only this thread writes
// them).
__device__ __forceinline__ void conv_bwd_any(float* du, double* part, const float* dout, const float* u, const float* w, const float* bias,
                                             int L, int C, int k, int seg, int nsegb, int cblocks, int silu) {
    const int c = (blockIdx.x % cblocks) * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int sg = blockIdx.x / cblocks;
    const i64 b = sg / nsegb;
    const int s0 = (sg % nsegb) * seg, s1 = min(L, s0 + seg);
    const float* ub = u + b * L * C + c;
    const float* gb = dout + b * L * C + c;
    const float* wc = w + (i64)c * k;
    const double bv = bias ? (double)bias[c] : 0.0;
    double* pp = part ? part + ((i64)sg * C + c) * (k + 1) : nullptr;
    if (pp)
        for (int j = 0; j <= k; j++) pp[j] = 0.0;
    for (int t = s0; t < s1; t++) {
        double dp = conv_dpre(ub, gb, wc, bv, t, L, C, k, silu);
        if (pp) {
            for (int j = 0; j < k; j++) {
                int ts = t - k + 1 + j;
                if (ts >= 0) pp[j] += dp * (double)ub[(i64)ts * C];
            }
            pp[k] += dp;
        }
        double v = 0.0;
        for (int j = 0; j < k; j++) v += (double)wc[j] * conv_dpre(ub, gb, wc, bv, t + k - 1 - j, L, C, k, silu);
        du[b * L * C + c + (i64)t * C] = (float)v;
    }
}

#define CONV_BWD(K)                                                                                                                     \
    extern "C" __global__ void k_conv1d_bwd_##K(float* du, double* part, const float* dout, const float* u, const float* w,            \
                                                const float* bias, int L, int C, int seg, int nsegb, int cblocks, int silu) {          \
        conv_bwd<K>(du, part, dout, u, w, bias, L, C, seg, nsegb, cblocks, silu);                                                      \
    }
CONV_BWD(1)
CONV_BWD(2)
CONV_BWD(3)
CONV_BWD(4)
CONV_BWD(5)
CONV_BWD(6)
CONV_BWD(7)
CONV_BWD(8)

extern "C" __global__ void k_conv1d_bwd_any(float* du, double* part, const float* dout, const float* u, const float* w, const float* bias,
                                            int L, int C, int k, int seg, int nsegb, int cblocks, int silu) {
    conv_bwd_any(du, part, dout, u, w, bias, L, C, k, seg, nsegb, cblocks, silu);
}

// k_conv1d_params: dw[c, j] += Σ_sg part[sg][c][j] (j < k), dbias[c] +=
// Σ_sg part[sg][c][k]; either may be null.
extern "C" __global__ void k_conv1d_params(float* dw, float* dbias, const double* part, int nseg, int C, int k) {
    const i64 cols = (i64)C * (k + 1);
    MB_STRIDE(i, cols) {
        const int c = (int)(i / (k + 1)), j = (int)(i % (k + 1));
        if (j < k ? !dw : !dbias) continue;
        double s = 0.0;
        for (int sg = 0; sg < nseg; sg++) s += part[(i64)sg * cols + i];
        float* o = j < k ? dw + (i64)c * k + j : dbias + c;
        *o = (float)((double)*o + s);
    }
}

// ---- dt softplus: dRaw = ddt·σ(raw + bias[h]); thread (segment sg, head
// h) walks rows sg·seg… and writes Σ dRaw to part[sg·H + h] (part may be
// null). dRaw may be ddt or raw (each element is read before it is
// written, by the same thread).
extern "C" __global__ void k_dt_softplus_bwd(float* draw, double* part, const float* ddt, const float* raw, const float* bias, i64 rows, int H,
                                             int seg, int nseg) {
    MB_STRIDE(i, (i64)nseg * H) {
        const int h = (int)(i % H);
        const i64 sg = i / H;
        const double bv = bias ? (double)bias[h] : 0.0;
        double s = 0.0;
        const i64 r1 = min(rows, (sg + 1) * seg);
        for (i64 r = sg * seg; r < r1; r++) {
            const i64 k = r * H + h;
            double d = (double)ddt[k] * mb_sigmoid((double)raw[k] + bv);
            draw[k] = (float)d;
            s += d;
        }
        if (part) part[i] = s;
    }
}

// ---- gated RMSNorm (forward: k_group_norm mode 0 in norm.cu)
//
// Per group of gs channels of a row: g = y·silu(z) (y without z),
// rstd = 1/√(mean(g²) + eps), out = g·rstd·w. Backward, ĝ = dout·w:
//   dg = rstd·ĝ − rstd³·g·mean(ĝ·g), dy = dg·silu(z), dz = dg·y·silu′(z),
//   dw += Σ_rows dout·g·rstd.
// Block blockIdx.x takes rows [r0, r0 + rb); warp w takes the tasks
// (group, 32·GN_V columns of it) w, w + warps, …, walking the block's rows
// in order, so each weight channel's sum has one owner: it goes to
// part[blockIdx.x][channel] (part may be null).
#define GN_V 4
extern "C" __global__ void k_gated_norm_bwd(float* dy, float* dz, double* part, const float* dout, const float* y, const float* z,
                                            const float* w, i64 rows, int width, int gs, int rb, float eps) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const i64 r0 = (i64)blockIdx.x * rb, r1 = min(rows, r0 + rb);
    const int groups = width / gs, nchunk = (gs + 32 * GN_V - 1) / (32 * GN_V);
    for (int task = warp; task < groups * nchunk; task += nwarps) {
        const int k = task / nchunk, j0 = (task % nchunk) * 32 * GN_V;
        const float* wk = w + (i64)k * gs;
        double acc[GN_V];
#pragma unroll
        for (int v = 0; v < GN_V; v++) acc[v] = 0.0;
        for (i64 r = r0; r < r1; r++) {
            const i64 base = r * width + (i64)k * gs;
            double ss = 0.0, sgw = 0.0;
            for (int j = lane; j < gs; j += 32) {
                double g = (double)y[base + j];
                if (z) {
                    double zv = (double)z[base + j];
                    g *= zv * mb_sigmoid(zv);
                }
                ss += g * g;
                sgw += (double)dout[base + j] * (double)wk[j] * g;
            }
            ss = warp_sum_d(ss);
            sgw = warp_sum_d(sgw);
            const double rs = 1.0 / sqrt(ss / gs + (double)eps);
            const double cc = rs * rs * rs * sgw / gs;
#pragma unroll
            for (int v = 0; v < GN_V; v++) {
                const int j = j0 + lane + 32 * v;
                if (j >= gs) break;
                const double yv = (double)y[base + j], go = (double)dout[base + j];
                double g = yv, sz = 1.0, zv = 0.0;
                if (z) {
                    zv = (double)z[base + j];
                    sz = zv * mb_sigmoid(zv);
                    g = yv * sz;
                }
                const double dg = rs * go * (double)wk[j] - cc * g;
                dy[base + j] = (float)(dg * sz);
                if (z) dz[base + j] = (float)(dg * yv * mb_silu_grad(zv));
                acc[v] += go * g * rs;
            }
        }
        if (part) {
#pragma unroll
            for (int v = 0; v < GN_V; v++) {
                const int j = j0 + lane + 32 * v;
                if (j < gs) part[(i64)blockIdx.x * width + (i64)k * gs + j] = acc[v];
            }
        }
    }
}

// ---- the scan's passes between chunks (train_mamba_scan.cu)

// k_mamba_state_pass: for each (batch·head) and element e of the P·N
// state, st[c] holds Sloc_c and dst[c] dSloc_c on entry; on return st[c]
// is H_c, the state entering chunk c (H_0 = 0, H_{c+1} = decay_c·H_c +
// Sloc_c), and dst[c] is dH_{c+1}, the gradient of the state leaving it
// (0 for the last chunk, dH_c = decay_c·dH_{c+1} + dSloc_c). Items
// [0, total) run the first recurrence and [total, 2·total) the second, so
// each thread's dependent chain is one walk over the chunks; loads come
// MB_PASS chunks at a time, ahead of the chain.
#define MB_PASS 8
extern "C" __global__ void k_mamba_state_pass(float* __restrict__ st, float* __restrict__ dst, const float* __restrict__ decay, i64 total,
                                              int nc, int pn) {
    MB_STRIDE(i2, 2 * total) {
        const bool fwd = i2 < total;
        const i64 i = fwd ? i2 : i2 - total;
        const i64 bh = i / pn;
        float* sp = (fwd ? st : dst) + bh * nc * pn + (i % pn);
        const float* dec = decay + bh * nc;
        float run = 0.f;
        // Chunk k of the walk: c = k forward, nc − 1 − k backward.
        for (int k0 = 0; k0 < nc; k0 += MB_PASS) {
            float v[MB_PASS], e[MB_PASS];
#pragma unroll
            for (int k = 0; k < MB_PASS; k++)
                if (k0 + k < nc) {
                    const int c = fwd ? k0 + k : nc - 1 - k0 - k;
                    v[k] = sp[(i64)c * pn];
                    e[k] = dec[c];
                }
#pragma unroll
            for (int k = 0; k < MB_PASS; k++)
                if (k0 + k < nc) {
                    const int c = fwd ? k0 + k : nc - 1 - k0 - k;
                    sp[(i64)c * pn] = run;
                    run = fmaf(e[k], run, v[k]);
                }
        }
    }
}

// k_mamba_scan_params: dA[h] += Σ_{b,c} partA[(b·H + h)·nc + c] and the
// same for dD (dD may be null), in order, in double.
extern "C" __global__ void k_mamba_scan_params(float* dA, float* dD, const double* partA, const double* partD, int nb, int H, int nc) {
    MB_STRIDE(h, H) {
        double sa = 0.0, sd = 0.0;
        for (int b = 0; b < nb; b++)
            for (int c = 0; c < nc; c++) {
                const i64 k = ((i64)b * H + h) * nc + c;
                sa += partA[k];
                sd += partD[k];
            }
        dA[h] = (float)((double)dA[h] + sa);
        if (dD) dD[h] = (float)((double)dD[h] + sd);
    }
}

// k_mamba_group_sum: out[r, g, n] = Σ_{h of group g} src[r, h, n] (head
// order, double) for r < rows; H heads in G groups.
extern "C" __global__ void k_mamba_group_sum(float* out, const float* src, i64 total, int H, int G, int N) {
    const int rep = H / G;
    MB_STRIDE(i, total) {
        const int n = (int)(i % N);
        const i64 rg = i / N;
        const int g = (int)(rg % G);
        const i64 r = rg / G;
        const float* s = src + (r * H + (i64)g * rep) * N + n;
        double v = 0.0;
        for (int k = 0; k < rep; k++) v += (double)s[(i64)k * N];
        out[i] = (float)v;
    }
}

// ---- Version 2 of the conv, dt softplus and gated-norm backwards (ops.go's
// rowOpsV1 = false). The element arithmetic is that of the kernels above;
// what changes is the work each thread does between loads and stores.

#ifdef MATSURGERY_EMU
struct __attribute__((aligned(16))) mb_f4 {
    float x, y, z, w;
};
#else
typedef float4 mb_f4;
#endif

// CV consecutive floats from p (16-byte aligned when CV = 4) to r, and back.
template <int CV>
__device__ __forceinline__ void mb_ld(float* r, const float* __restrict__ p) {
    if (CV == 4) {
        mb_f4 t = *(const mb_f4*)p;
        r[0] = t.x, r[1] = t.y, r[2] = t.z, r[3] = t.w;
    } else {
#pragma unroll
        for (int v = 0; v < CV; v++) r[v] = p[v];
    }
}
template <int CV>
__device__ __forceinline__ void mb_st(float* __restrict__ p, const float* r) {
    if (CV == 4) {
        mb_f4 t;
        t.x = r[0], t.y = r[1], t.z = r[2], t.w = r[3];
        *(mb_f4*)p = t;
    } else {
#pragma unroll
        for (int v = 0; v < CV; v++) p[v] = r[v];
    }
}

// k_conv1d_bwd2_<K>_<CV>: conv_bwd with CV channels a thread (16-byte loads
// when CV = 4) and restrict-qualified operands, so a thread's loads run
// ahead of its stores. Block (32 channel vectors, MB_CONV_SY segments):
// thread (x, y) takes channels (blockIdx.x·32 + x)·CV … and segment
// blockIdx.y·MB_CONV_SY + y of seg tokens (segments numbered across batch
// rows, nsegb a row). The block then adds its segments' weight and bias
// sums in segment order, in double, into part[blockIdx.y][c][0..K] (K+1
// doubles), for k_conv1d_params. du matches conv_bwd's bits.
#define MB_CONV_SY 8
#define MB_CONV_CX 32
template <int K, int CV>
__device__ __forceinline__ void conv_bwd2(float* __restrict__ du, double* __restrict__ part, const float* __restrict__ dout,
                                          const float* __restrict__ u, const float* __restrict__ w, const float* __restrict__ bias, int L,
                                          int C, int seg, int nsegb, int nseg, int silu) {
    __shared__ double red[MB_CONV_SY][MB_CONV_CX * CV];
    const int c0 = (blockIdx.x * MB_CONV_CX + threadIdx.x) * CV;
    const int sg = blockIdx.y * MB_CONV_SY + threadIdx.y;
    const bool active = c0 < C && sg < nseg;
    double accw[K][CV], accb[CV];
#pragma unroll
    for (int v = 0; v < CV; v++) {
        accb[v] = 0.0;
#pragma unroll
        for (int j = 0; j < K; j++) accw[j][v] = 0.0;
    }
    if (active) {
        const i64 b = sg / nsegb;
        const int s0 = (sg % nsegb) * seg, s1 = min(L, s0 + seg);
        const float* ub = u + b * L * C + c0;
        const float* gb = dout + b * L * C + c0;
        float* db = du + b * L * C + c0;
        float wf[CV][K];
        double bv[CV], dring[K][CV];
        float ring[K][CV];
#pragma unroll
        for (int v = 0; v < CV; v++) {
            bv[v] = bias ? (double)bias[c0 + v] : 0.0;
#pragma unroll
            for (int j = 0; j < K; j++) wf[v][j] = w[(i64)(c0 + v) * K + j];
        }
#pragma unroll
        for (int j = 0; j < K; j++) {
            const int t = s0 - K + j;
            if (j >= 1 && t >= 0) mb_ld<CV>(ring[j], ub + (i64)t * C);
            else
#pragma unroll
                for (int v = 0; v < CV; v++) ring[j][v] = 0.f;
#pragma unroll
            for (int v = 0; v < CV; v++) dring[j][v] = 0.0;
        }
#pragma unroll 2
        for (int t = s0; t < s1 + K - 1; t++) {
#pragma unroll
            for (int j = 0; j < K - 1; j++)
#pragma unroll
                for (int v = 0; v < CV; v++) ring[j][v] = ring[j + 1][v], dring[j][v] = dring[j + 1][v];
            float gf[CV];
            if (t < L) {
                mb_ld<CV>(ring[K - 1], ub + (i64)t * C);
                mb_ld<CV>(gf, gb + (i64)t * C);
            } else {
#pragma unroll
                for (int v = 0; v < CV; v++) ring[K - 1][v] = 0.f, gf[v] = 0.f;
            }
            float o[CV];
#pragma unroll
            for (int v = 0; v < CV; v++) {
                double dp = 0.0;
                if (t < L) {
                    double g = (double)gf[v];
                    if (silu) {
                        double pre = bv[v];
#pragma unroll
                        for (int j = 0; j < K; j++) pre += (double)wf[v][j] * (double)ring[j][v];
                        g *= mb_silu_grad(pre);
                    }
                    dp = g;
                }
                if (t < s1) {
                    accb[v] += dp;
#pragma unroll
                    for (int j = 0; j < K; j++) accw[j][v] += dp * (double)ring[j][v];
                }
                dring[K - 1][v] = dp; // dring[i] = dpre at token t − K + 1 + i
                double x = 0.0;
#pragma unroll
                for (int j = 0; j < K; j++) x += (double)wf[v][j] * dring[K - 1 - j][v];
                o[v] = (float)x;
            }
            const int s = t - K + 1;
            if (s >= s0) mb_st<CV>(db + (i64)s * C, o);
        }
    }
    if (!part) return; // uniform over the grid
    const int lin = threadIdx.y * MB_CONV_CX + threadIdx.x, cb = blockIdx.x * MB_CONV_CX * CV;
#pragma unroll
    for (int q = 0; q <= K; q++) {
        __syncthreads();
#pragma unroll
        for (int v = 0; v < CV; v++) red[threadIdx.y][threadIdx.x * CV + v] = q < K ? accw[q < K ? q : 0][v] : accb[v];
        __syncthreads();
        for (int i = lin; i < MB_CONV_CX * CV; i += MB_CONV_CX * MB_CONV_SY) {
            if (cb + i >= C) continue;
            double s = 0.0;
            for (int y = 0; y < MB_CONV_SY; y++) s += red[y][i];
            part[((i64)blockIdx.y * C + cb + i) * (K + 1) + q] = s;
        }
    }
}

#define CONV_BWD2(K, CV)                                                                                                               \
    extern "C" __global__ void __launch_bounds__(MB_CONV_CX* MB_CONV_SY)                                                               \
        k_conv1d_bwd2_##K##_##CV(float* du, double* part, const float* dout, const float* u, const float* w, const float* bias, int L, \
                                 int C, int seg, int nsegb, int nseg, int silu) {                                                     \
        conv_bwd2<K, CV>(du, part, dout, u, w, bias, L, C, seg, nsegb, nseg, silu);                                                   \
    }
CONV_BWD2(1, 1)
CONV_BWD2(2, 1)
CONV_BWD2(3, 1)
CONV_BWD2(4, 1)
CONV_BWD2(5, 1)
CONV_BWD2(6, 1)
CONV_BWD2(7, 1)
CONV_BWD2(8, 1)
CONV_BWD2(1, 4)
CONV_BWD2(2, 4)
CONV_BWD2(3, 4)
CONV_BWD2(4, 4)

// k_dt_softplus_bwd2: k_dt_softplus_bwd with seg = MB_DT_SEG rows, whose
// loads all come first (so they overlap: dRaw may alias ddt or raw, and
// each element is still read before it is written, by its own thread).
// The same bits.
#define MB_DT_SEG 16
extern "C" __global__ void k_dt_softplus_bwd2(float* draw, double* part, const float* ddt, const float* raw, const float* bias, i64 rows, int H,
                                              int nseg) {
    MB_STRIDE(i, (i64)nseg * H) {
        const int h = (int)(i % H);
        const i64 sg = i / H, r0 = sg * MB_DT_SEG;
        const double bv = bias ? (double)bias[h] : 0.0;
        float gv[MB_DT_SEG], rv[MB_DT_SEG];
#pragma unroll
        for (int q = 0; q < MB_DT_SEG; q++)
            if (r0 + q < rows) {
                gv[q] = ddt[(r0 + q) * H + h];
                rv[q] = raw[(r0 + q) * H + h];
            }
        double s = 0.0;
#pragma unroll
        for (int q = 0; q < MB_DT_SEG; q++)
            if (r0 + q < rows) {
                double d = (double)gv[q] * mb_sigmoid((double)rv[q] + bv);
                draw[(r0 + q) * H + h] = (float)d;
                s += d;
            }
        if (part) part[i] = s;
    }
}

// k_gated_norm_bwd_w<V>: k_gated_norm_bwd for groups of at most 32·V
// channels, a warp a (group, run of rb rows): lane l holds channels l,
// l + 32, … of the group (V of them) in registers, loads the next row
// while it finishes the current one, and keeps its weight sums; warp
// (run q, group k) writes them to part[q][k·gs + j]. Sums per lane in
// channel order and across the warp as k_gated_norm_bwd does, the same
// runs of rows: the same bits.
template <int V>
__device__ __forceinline__ void gated_norm_bwd_w(float* __restrict__ dy, float* __restrict__ dz, double* __restrict__ part,
                                                 const float* __restrict__ dout, const float* __restrict__ y, const float* __restrict__ z,
                                                 const float* __restrict__ w, i64 rows, int width, int gs, int rb, float eps) {
    const int lane = threadIdx.x & 31;
    const i64 gw = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int groups = width / gs;
    const i64 nrb = (rows + rb - 1) / rb;
    if (gw >= nrb * groups) return; // whole warps: no collective spans warps
    const int k = (int)(gw % groups);
    const i64 q = gw / groups, r0 = q * rb, r1 = min(rows, r0 + rb);
    float wk[V], cy[V], cz[V], cg[V], ny[V], nz[V], ng[V];
    double acc[V];
#pragma unroll
    for (int v = 0; v < V; v++) {
        const int j = lane + 32 * v;
        wk[v] = j < gs ? w[(i64)k * gs + j] : 0.f;
        acc[v] = 0.0;
        cy[v] = cz[v] = cg[v] = ny[v] = nz[v] = ng[v] = 0.f;
    }
    auto load = [&](i64 r, float* ly, float* lz, float* lg) {
        const i64 base = r * width + (i64)k * gs;
#pragma unroll
        for (int v = 0; v < V; v++) {
            const int j = lane + 32 * v;
            if (j < gs) {
                ly[v] = y[base + j];
                lg[v] = dout[base + j];
                if (z) lz[v] = z[base + j];
            }
        }
    };
    if (r0 < r1) load(r0, cy, cz, cg);
    for (i64 r = r0; r < r1; r++) {
        if (r + 1 < r1) load(r + 1, ny, nz, ng);
        const i64 base = r * width + (i64)k * gs;
        double ss = 0.0, sgw = 0.0, gd[V], szd[V], sg[V];
#pragma unroll
        for (int v = 0; v < V; v++) {
            const int j = lane + 32 * v;
            gd[v] = (double)cy[v], szd[v] = 1.0, sg[v] = 0.0;
            if (j < gs) {
                if (z) {
                    const double zv = (double)cz[v];
                    sg[v] = mb_sigmoid(zv);
                    szd[v] = zv * sg[v];
                    gd[v] *= szd[v];
                }
                ss += gd[v] * gd[v];
                sgw += (double)cg[v] * (double)wk[v] * gd[v];
            }
        }
        ss = warp_sum_d(ss);
        sgw = warp_sum_d(sgw);
        const double rs = 1.0 / sqrt(ss / gs + (double)eps);
        const double cc = rs * rs * rs * sgw / gs;
#pragma unroll
        for (int v = 0; v < V; v++) {
            const int j = lane + 32 * v;
            if (j < gs) {
                const double go = (double)cg[v];
                const double dg = rs * go * (double)wk[v] - cc * gd[v];
                dy[base + j] = (float)(dg * szd[v]);
                if (z) {
                    const double zv = (double)cz[v], s = sg[v];
                    dz[base + j] = (float)(dg * (double)cy[v] * (s * (1.0 + zv * (1.0 - s))));
                }
                acc[v] += go * gd[v] * rs;
            }
        }
#pragma unroll
        for (int v = 0; v < V; v++) cy[v] = ny[v], cz[v] = nz[v], cg[v] = ng[v];
    }
    if (part) {
#pragma unroll
        for (int v = 0; v < V; v++) {
            const int j = lane + 32 * v;
            if (j < gs) part[q * width + (i64)k * gs + j] = acc[v];
        }
    }
}

#define GATED_NORM_BWD_W(V)                                                                                                                 \
    extern "C" __global__ void k_gated_norm_bwd_w##V(float* dy, float* dz, double* part, const float* dout, const float* y, const float* z, \
                                                     const float* w, i64 rows, int width, int gs, int rb, float eps) {                     \
        gated_norm_bwd_w<V>(dy, dz, part, dout, y, z, w, rows, width, gs, rb, eps);                                                        \
    }
GATED_NORM_BWD_W(1)
GATED_NORM_BWD_W(2)
GATED_NORM_BWD_W(3)
GATED_NORM_BWD_W(4)
GATED_NORM_BWD_W(5)
GATED_NORM_BWD_W(6)
GATED_NORM_BWD_W(7)
GATED_NORM_BWD_W(8)
