// elementwise.cu: elementwise, layout and conversion kernels. Every tensor
// argument comes with a flag that says whether it is bf16 (1) or float32
// (0); element counts are 64-bit. Activations are evaluated in double and
// rounded once, like the CPU backend.

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

enum { BIN_ADD = 0, BIN_MUL = 1 };

extern "C" __global__ void k_binary(void* out, int obf, const void* a, int abf, const void* b, int bbf, i64 n, int op) {
    GRID_STRIDE(i, n) {
        float x = ld_elem(a, abf, i), y = ld_elem(b, bbf, i);
        st_elem(out, obf, i, op == BIN_ADD ? x + y : x * y);
    }
}

enum { UN_COPY = 0, UN_SCALE = 1, UN_SILU = 2, UN_GELU_ERF = 3, UN_GELU_TANH = 4 };

__device__ __forceinline__ float unary(int op, float x, float s) {
    double v = (double)x;
    switch (op) {
    case UN_SCALE: return s * x;
    case UN_SILU: return (float)(v / (1.0 + exp(-v)));
    case UN_GELU_ERF: return (float)(0.5 * v * (1.0 + erf(v * 0.70710678118654752440)));
    case UN_GELU_TANH: return (float)(0.5 * v * (1.0 + tanh(0.79788456080286535588 * (v + 0.044715 * v * v * v))));
    }
    return x;
}

// k_unary: out = f(a); UN_COPY with differing flags converts dtype.
extern "C" __global__ void k_unary(void* out, int obf, const void* a, int abf, i64 n, int op, float s) {
    GRID_STRIDE(i, n) { st_elem(out, obf, i, unary(op, ld_elem(a, abf, i), s)); }
}

// k_add_bias: x[r, j] += bias[j] for rows·n elements.
extern "C" __global__ void k_add_bias(void* x, int xbf, const void* bias, int bbf, i64 total, int n) {
    GRID_STRIDE(i, total) { st_elem(x, xbf, i, ld_elem(x, xbf, i) + ld_elem(bias, bbf, i % n)); }
}

// k_slice_cols: out[r, j] = src[r, col0 + j], j < cols.
extern "C" __global__ void k_slice_cols(void* out, int obf, const void* src, int sbf, i64 total, int cols, int scols, int col0) {
    GRID_STRIDE(i, total) {
        i64 r = i / cols;
        int j = (int)(i - r * cols);
        st_elem(out, obf, i, ld_elem(src, sbf, r * scols + col0 + j));
    }
}

// k_repeat_heads: out[r, h, d] = src[r, h / (heads / srcHeads), d].
extern "C" __global__ void k_repeat_heads(void* out, int obf, const void* src, int sbf, i64 total, int heads, int srcHeads, int dim) {
    int rep = heads / srcHeads;
    GRID_STRIDE(i, total) {
        int d = (int)(i % dim);
        i64 rh = i / dim;
        int h = (int)(rh % heads);
        i64 r = rh / heads;
        st_elem(out, obf, i, ld_elem(src, sbf, (r * srcHeads + h / rep) * dim + d));
    }
}

// k_gather_rows: out[r, j] = table[ids[r], j].
extern "C" __global__ void k_gather_rows(float* out, const void* table, int tbf, const int* ids, i64 total, int cols) {
    GRID_STRIDE(i, total) {
        i64 r = i / cols;
        out[i] = ld_elem(table, tbf, (i64)ids[r] * cols + (i - r * cols));
    }
}

// k_dt_softplus: out[r, h] = softplus(dt[r, h] + bias[h]) with PyTorch's
// threshold (softplus(v) = v above 20).
extern "C" __global__ void k_dt_softplus(void* out, int obf, const void* dt, int dbf, const void* bias, int bbf, i64 total, int heads) {
    GRID_STRIDE(i, total) {
        double v = (double)ld_elem(dt, dbf, i);
        if (bias) v += (double)ld_elem(bias, bbf, i % heads);
        st_elem(out, obf, i, (float)(v > 20.0 ? v : log1p(exp(v))));
    }
}

// k_causal_conv1d: out[b, t, c] = bias[c] + Σ_j w[c, j]·u[b, t−k+1+j, c]
// (u = 0 before t = 0), then SiLU when silu != 0. Sums in double.
extern "C" __global__ void k_causal_conv1d(void* out, int obf, const void* u, int ubf, const void* w, int wbf, const void* bias, int bbf,
                                           i64 total, int seqlen, int channels, int k, int silu) {
    GRID_STRIDE(i, total) {
        int c = (int)(i % channels);
        i64 bt = i / channels;
        int t = (int)(bt % seqlen);
        double acc = bias ? (double)ld_elem(bias, bbf, c) : 0.0;
        for (int j = 0; j < k; j++) {
            int ts = t - k + 1 + j;
            if (ts < 0) continue;
            acc += (double)ld_elem(w, wbf, (i64)c * k + j) * (double)ld_elem(u, ubf, i + (i64)(ts - t) * channels);
        }
        if (silu) acc = acc / (1.0 + exp(-acc));
        st_elem(out, obf, i, (float)acc);
    }
}

// k_rope: rotate, in place, dims (i, i + rot/2), i < rot/2, of each head of
// x[b, t, h, p] by angle (pos0 + t)·theta^(−2i/rot), in double.
extern "C" __global__ void k_rope(void* x, int xbf, i64 pairs, int seqlen, int heads, int headdim, int rot, double theta, int pos0) {
    int half = rot / 2;
    GRID_STRIDE(i, pairs) {
        int d = (int)(i % half);
        i64 bth = i / half;
        int t = (int)((bth / heads) % seqlen);
        i64 base = bth * headdim;
        double inv = pow(theta, -2.0 * (double)d / (double)rot);
        double s, c;
        sincos((double)(pos0 + t) * inv, &s, &c);
        double x1 = (double)ld_elem(x, xbf, base + d), x2 = (double)ld_elem(x, xbf, base + d + half);
        st_elem(x, xbf, base + d, (float)(x1 * c - x2 * s));
        st_elem(x, xbf, base + d + half, (float)(x2 * c + x1 * s));
    }
}

// ---- Row-op kernels, version 2 (ops.go's rowOpsV1 = false): each dtype
// pair its own kernel (no per-element flag tests), 16-byte vector loads
// where the launch code found the operands aligned, and 2-D grids (blocks
// of columns × rows) instead of a division per element. The arithmetic
// of every element is the one of the kernel above it replaces, so the
// results are the same bits.

#ifdef MATSURGERY_EMU
struct __attribute__((aligned(16))) ew_f4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) ew_u2 {
    unsigned x, y;
};
#else
typedef float4 ew_f4;
typedef uint2 ew_u2;
#endif

// Four bf16 (8 bytes) to floats and back.
__device__ __forceinline__ ew_f4 ew_bf4_to_f4(ew_u2 u) {
    ew_f4 r;
    r.x = bf16_lo(u.x);
    r.y = bf16_hi(u.x);
    r.z = bf16_lo(u.y);
    r.w = bf16_hi(u.y);
    return r;
}
__device__ __forceinline__ ew_u2 ew_f4_to_bf4(ew_f4 v) {
    ew_u2 r;
    r.x = (unsigned)f32_to_bf16(v.x) | ((unsigned)f32_to_bf16(v.y) << 16);
    r.y = (unsigned)f32_to_bf16(v.z) | ((unsigned)f32_to_bf16(v.w) << 16);
    return r;
}

// k_cvt_f32_bf16 / k_cvt_bf16_f32: out = a converted (k_unary UN_COPY);
// a and out aligned to their 4-element vectors (16 bytes f32, 8 bf16).
extern "C" __global__ void k_cvt_f32_bf16(bf16_t* out, const float* a, i64 n) {
    i64 nv = n >> 2;
    GRID_STRIDE(i, nv) { ((ew_u2*)out)[i] = ew_f4_to_bf4(((const ew_f4*)a)[i]); }
    GRID_STRIDE(i, n - 4 * nv) { out[4 * nv + i] = f32_to_bf16(a[4 * nv + i]); }
}
extern "C" __global__ void k_cvt_bf16_f32(float* out, const bf16_t* a, i64 n) {
    i64 nv = n >> 2;
    GRID_STRIDE(i, nv) { ((ew_f4*)out)[i] = ew_bf4_to_f4(((const ew_u2*)a)[i]); }
    GRID_STRIDE(i, n - 4 * nv) { out[4 * nv + i] = bf16_to_f32(a[4 * nv + i]); }
}

// gelu_d: unary's UN_GELU_ERF (tanhForm 0) or UN_GELU_TANH, in double.
__device__ __forceinline__ float gelu_d(float x, int tanhForm) {
    double v = (double)x;
    if (tanhForm) return (float)(0.5 * v * (1.0 + tanh(0.79788456080286535588 * (v + 0.044715 * v * v * v))));
    return (float)(0.5 * v * (1.0 + erf(v * 0.70710678118654752440)));
}

// k_gelu_f32: out = GELU(a), float32, a and out 16-byte aligned (out may
// be a).
extern "C" __global__ void k_gelu_f32(float* out, const float* a, i64 n, int tanhForm) {
    i64 nv = n >> 2;
    GRID_STRIDE(i, nv) {
        ew_f4 v = ((const ew_f4*)a)[i];
        v.x = gelu_d(v.x, tanhForm);
        v.y = gelu_d(v.y, tanhForm);
        v.z = gelu_d(v.z, tanhForm);
        v.w = gelu_d(v.w, tanhForm);
        ((ew_f4*)out)[i] = v;
    }
    GRID_STRIDE(i, n - 4 * nv) { out[4 * nv + i] = gelu_d(a[4 * nv + i], tanhForm); }
}

// k_add_bias_rows: x[r, j] += bias[j] over rows rows of n (float32). Grid
// (column blocks, row strides): thread j keeps its bias (vec: 4 columns,
// n % 4 == 0, x and bias 16-byte aligned) and walks rows blockIdx.y,
// blockIdx.y + gridDim.y, …
extern "C" __global__ void k_add_bias_rows(float* x, const float* bias, int rows, int n, int vec) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (vec) {
        if (4 * j >= n) return;
        ew_f4 b = ((const ew_f4*)bias)[j];
        for (int r = blockIdx.y; r < rows; r += gridDim.y) {
            ew_f4* p = (ew_f4*)(x + (i64)r * n) + j;
            ew_f4 v = *p;
            v.x += b.x;
            v.y += b.y;
            v.z += b.z;
            v.w += b.w;
            *p = v;
        }
    } else {
        if (j >= n) return;
        float b = bias[j];
        for (int r = blockIdx.y; r < rows; r += gridDim.y) x[(i64)r * n + j] += b;
    }
}

// k_slice_cols_rows: out[r, j] = src[r, col0 + j], j < cols (float32),
// grid as k_add_bias_rows; vec: 4 columns a thread (cols, scols and col0
// multiples of 4, out and src 16-byte aligned).
extern "C" __global__ void k_slice_cols_rows(float* out, const float* src, int rows, int cols, int scols, int col0, int vec) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (vec) {
        if (4 * j >= cols) return;
        for (int r = blockIdx.y; r < rows; r += gridDim.y)
            ((ew_f4*)(out + (i64)r * cols))[j] = ((const ew_f4*)(src + (i64)r * scols + col0))[j];
    } else {
        if (j >= cols) return;
        for (int r = blockIdx.y; r < rows; r += gridDim.y) out[(i64)r * cols + j] = src[(i64)r * scols + col0 + j];
    }
}

// k_causal_conv1d2_<K>_<CV>: k_causal_conv1d (ops.go's rowOpsV1 = false)
// for float32 operands and k ≤ 8: thread x of block blockIdx.x takes
// channels c0 = ((blockIdx.x % cblocks)·blockDim.x + x)·CV … (16-byte
// loads when CV = 4) over segment blockIdx.x / cblocks of seg tokens
// (numbered across batch rows, nsegb a row), keeping the last K inputs in
// registers, so each input is read once (K − 1 more at a segment's
// start). The sum's terms and order are k_causal_conv1d's: the same bits.
template <int K, int CV>
__device__ __forceinline__ void causal_conv1d2(float* __restrict__ out, const float* __restrict__ u, const float* __restrict__ w,
                                               const float* __restrict__ bias, int L, int C, int seg, int nsegb, int cblocks, int silu) {
    const int c0 = ((blockIdx.x % cblocks) * blockDim.x + threadIdx.x) * CV;
    if (c0 >= C) return;
    const int sg = blockIdx.x / cblocks;
    const i64 b = sg / nsegb;
    const int s0 = (sg % nsegb) * seg, s1 = min(L, s0 + seg);
    const float* ub = u + b * L * C + c0;
    float* ob = out + b * L * C + c0;
    float wf[CV][K], bf[CV], ring[K][CV];
#pragma unroll
    for (int v = 0; v < CV; v++) {
        bf[v] = bias ? bias[c0 + v] : 0.f;
#pragma unroll
        for (int j = 0; j < K; j++) wf[v][j] = w[(i64)(c0 + v) * K + j];
    }
#pragma unroll
    for (int j = 0; j < K; j++) {
        const int t = s0 - K + j;
#pragma unroll
        for (int v = 0; v < CV; v++) ring[j][v] = (j >= 1 && t >= 0) ? ub[(i64)t * C + v] : 0.f;
    }
#pragma unroll 4
    for (int t = s0; t < s1; t++) {
#pragma unroll
        for (int j = 0; j < K - 1; j++)
#pragma unroll
            for (int v = 0; v < CV; v++) ring[j][v] = ring[j + 1][v];
        float o[CV];
        if (CV == 4) {
            ew_f4 a = *(const ew_f4*)(ub + (i64)t * C);
            ring[K - 1][0] = a.x, ring[K - 1][1] = a.y, ring[K - 1][2] = a.z, ring[K - 1][3] = a.w;
        } else {
#pragma unroll
            for (int v = 0; v < CV; v++) ring[K - 1][v] = ub[(i64)t * C + v];
        }
#pragma unroll
        for (int v = 0; v < CV; v++) {
            double acc = bias ? (double)bf[v] : 0.0;
#pragma unroll
            for (int j = 0; j < K; j++) {
                if (t - K + 1 + j < 0) continue;
                acc += (double)wf[v][j] * (double)ring[j][v];
            }
            if (silu) acc = acc / (1.0 + exp(-acc));
            o[v] = (float)acc;
        }
        if (CV == 4) {
            ew_f4 a;
            a.x = o[0], a.y = o[1], a.z = o[2], a.w = o[3];
            *(ew_f4*)(ob + (i64)t * C) = a;
        } else {
#pragma unroll
            for (int v = 0; v < CV; v++) ob[(i64)t * C + v] = o[v];
        }
    }
}

#define CAUSAL_CONV1D2(K, CV)                                                                                                    \
    extern "C" __global__ void k_causal_conv1d2_##K##_##CV(float* out, const float* u, const float* w, const float* bias, int L, \
                                                           int C, int seg, int nsegb, int cblocks, int silu) {                  \
        causal_conv1d2<K, CV>(out, u, w, bias, L, C, seg, nsegb, cblocks, silu);                                                \
    }
CAUSAL_CONV1D2(1, 1)
CAUSAL_CONV1D2(2, 1)
CAUSAL_CONV1D2(3, 1)
CAUSAL_CONV1D2(4, 1)
CAUSAL_CONV1D2(5, 1)
CAUSAL_CONV1D2(6, 1)
CAUSAL_CONV1D2(7, 1)
CAUSAL_CONV1D2(8, 1)
CAUSAL_CONV1D2(1, 4)
CAUSAL_CONV1D2(2, 4)
CAUSAL_CONV1D2(3, 4)
CAUSAL_CONV1D2(4, 4)
CAUSAL_CONV1D2(5, 4)
CAUSAL_CONV1D2(6, 4)
CAUSAL_CONV1D2(7, 4)
CAUSAL_CONV1D2(8, 4)
