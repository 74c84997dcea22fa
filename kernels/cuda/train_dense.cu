// train_dense.cu: the backward kernels of the dense, attention and layout
// operations (kernels.DenseGrad). Gradients are float32; activations'
// derivatives are evaluated in double and rounded once; every reduction
// runs in a fixed order (no atomics), so results repeat bit for bit.

typedef unsigned long long u64;

#define TD_GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// k_fill: t[i] = v.
extern "C" __global__ void k_fill(float* t, i64 n, float v) {
    TD_GRID_STRIDE(i, n) { t[i] = v; }
}

// k_gelu_backward: dx = dy·gelu'(x), erf form (tanhForm == 0) or tanh form.
extern "C" __global__ void k_gelu_backward(float* dx, const float* dy, const float* x, i64 n, int tanhForm) {
    TD_GRID_STRIDE(i, n) {
        double v = (double)x[i], d;
        if (tanhForm) {
            const double c = 0.79788456080286535588, a = 0.044715;
            double t = tanh(c * (v + a * v * v * v));
            d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * c * (1.0 + 3.0 * a * v * v);
        } else {
            d = 0.5 * (1.0 + erf(v * 0.70710678118654752440)) + v * exp(-0.5 * v * v) * 0.39894228040143267794;
        }
        dx[i] = (float)((double)dy[i] * d);
    }
}

#ifdef MATSURGERY_EMU
struct __attribute__((aligned(16))) td_f4 {
    float x, y, z, w;
};
#else
typedef float4 td_f4;
#endif

// td_gelu_grad: k_gelu_backward's dy·gelu'(x), the same arithmetic.
__device__ __forceinline__ float td_gelu_grad(float dyv, float xv, int tanhForm) {
    double v = (double)xv, d;
    if (tanhForm) {
        const double c = 0.79788456080286535588, a = 0.044715;
        double t = tanh(c * (v + a * v * v * v));
        d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * c * (1.0 + 3.0 * a * v * v);
    } else {
        d = 0.5 * (1.0 + erf(v * 0.70710678118654752440)) + v * exp(-0.5 * v * v) * 0.39894228040143267794;
    }
    return (float)((double)dyv * d);
}

// k_gelu_backward_v4: k_gelu_backward (ops' rowOpsV1 = false) with 16-byte
// vector loads and stores (dx, dy, x 16-byte aligned); dx may alias dy or x.
extern "C" __global__ void k_gelu_backward_v4(float* dx, const float* dy, const float* x, i64 n, int tanhForm) {
    i64 nv = n >> 2;
    TD_GRID_STRIDE(i, nv) {
        td_f4 g = ((const td_f4*)dy)[i], v = ((const td_f4*)x)[i];
        g.x = td_gelu_grad(g.x, v.x, tanhForm);
        g.y = td_gelu_grad(g.y, v.y, tanhForm);
        g.z = td_gelu_grad(g.z, v.z, tanhForm);
        g.w = td_gelu_grad(g.w, v.w, tanhForm);
        ((td_f4*)dx)[i] = g;
    }
    TD_GRID_STRIDE(i, n - 4 * nv) { dx[4 * nv + i] = td_gelu_grad(dy[4 * nv + i], x[4 * nv + i], tanhForm); }
}

// k_silu_backward: dx = dy·σ(x)·(1 + x·(1 − σ(x))).
extern "C" __global__ void k_silu_backward(float* dx, const float* dy, const float* x, i64 n) {
    TD_GRID_STRIDE(i, n) {
        double v = (double)x[i], s = 1.0 / (1.0 + exp(-v));
        dx[i] = (float)((double)dy[i] * s * (1.0 + v * (1.0 - s)));
    }
}

// k_sum_heads: out[r, s, d] = Σ_{j<rep} src[r, s·rep + j, d], summed in
// double in the order of j.
extern "C" __global__ void k_sum_heads(float* out, const float* src, i64 total, int srcHeads, int rep, int dim) {
    TD_GRID_STRIDE(i, total) {
        int d = (int)(i % dim);
        i64 rs = i / dim;
        int s = (int)(rs % srcHeads);
        i64 r = rs / srcHeads;
        const float* p = src + ((r * srcHeads + s) * rep) * dim + d;
        double acc = 0.0;
        for (int j = 0; j < rep; j++) acc += (double)p[(i64)j * dim];
        out[i] = (float)acc;
    }
}

// k_set_cols: dst[r, col0 + j] = src[r, j], j < cols.
extern "C" __global__ void k_set_cols(float* dst, const float* src, i64 total, int cols, int dstCols, int col0) {
    TD_GRID_STRIDE(i, total) {
        i64 r = i / cols;
        int j = (int)(i - r * cols);
        dst[r * dstCols + col0 + j] = src[i];
    }
}

// k_sum_rows_partial: part[c, j] = Σ a[r, j] over the rows r of chunk c
// (rowsPer rows each), in double, in row order. Grid (column blocks,
// chunks).
extern "C" __global__ void k_sum_rows_partial(double* part, const float* a, int rows, int n, int rowsPer) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    int r0 = blockIdx.y * rowsPer, r1 = min(rows, r0 + rowsPer);
    double acc = 0.0;
    for (int r = r0; r < r1; r++) acc += (double)a[(i64)r * n + j];
    part[(i64)blockIdx.y * n + j] = acc;
}

// k_sum_rows_final: out[j] (+)= Σ_c part[c, j] in chunk order.
extern "C" __global__ void k_sum_rows_final(float* out, const double* part, int chunks, int n, int accumulate) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    double acc = 0.0;
    for (int c = 0; c < chunks; c++) acc += part[(i64)c * n + j];
    out[j] = accumulate ? (float)((double)out[j] + acc) : (float)acc;
}

#define TD_NORM_THREADS 256

// Sum over the block of TD_NORM_THREADS threads (red: TD_NORM_THREADS/32
// doubles of shared memory). Every thread gets the total.
__device__ __forceinline__ double td_block_sum(double v, double* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum_d(v);
    __syncthreads(); // red may still be read by the previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double t = 0.0;
    for (int w = 0; w < TD_NORM_THREADS / 32; w++) t += red[w];
    return t;
}

// k_norm_backward: one block per row of n channels. mode 1, LayerNorm:
// with x̂ = (x − μ)·inv and g = dy·w, dx = inv·(g − mean(g) − x̂·mean(g·x̂));
// mode 0, RMSNorm: dx = inv·(g − x·inv²·mean(g·x)). Statistics and sums
// in double; each thread writes only elements it read, after the last
// reduction, so dx may alias dy or x.
extern "C" __global__ void __launch_bounds__(TD_NORM_THREADS) k_norm_backward(float* dx, const float* dy, const float* x, const float* w, int n, float eps, int mode) {
    __shared__ double red[TD_NORM_THREADS / 32];
    i64 base = (i64)blockIdx.x * n;
    double mean = 0.0;
    if (mode == 1) {
        double s = 0.0;
        for (int j = threadIdx.x; j < n; j += TD_NORM_THREADS) s += (double)x[base + j];
        mean = td_block_sum(s, red) / n;
    }
    double ss = 0.0;
    for (int j = threadIdx.x; j < n; j += TD_NORM_THREADS) {
        double v = (double)x[base + j] - mean;
        ss += v * v;
    }
    double inv = 1.0 / sqrt(td_block_sum(ss, red) / n + (double)eps);
    double sg = 0.0, sgx = 0.0;
    for (int j = threadIdx.x; j < n; j += TD_NORM_THREADS) {
        double g = (double)dy[base + j] * (double)w[j];
        sg += g;
        sgx += g * ((double)x[base + j] - mean) * inv;
    }
    double mg = mode == 1 ? td_block_sum(sg, red) / n : 0.0;
    double mgx = td_block_sum(sgx, red) / n; // mean(g·x̂); for RMSNorm x̂ = x·inv
    for (int j = threadIdx.x; j < n; j += TD_NORM_THREADS) {
        double g = (double)dy[base + j] * (double)w[j];
        double xh = ((double)x[base + j] - mean) * inv;
        dx[base + j] = (float)(inv * (g - mg - xh * mgx));
    }
}

// k_norm_backward_v<V>: k_norm_backward (ops.go's rowOpsV1 = false) for
// n ≤ V·TD_NORM_THREADS, each thread holding its channels j = threadIdx.x
// + i·TD_NORM_THREADS (i < V) of x, dy and w in registers: x is read once
// instead of four times. The sums take the same elements in the same
// order, so the results are the same bits; dx may alias dy or x (every
// load precedes the first store).
template <int V>
__device__ __forceinline__ void norm_backward_v(float* dx, const float* dy, const float* x, const float* w, int n, float eps, int mode) {
    __shared__ double red[TD_NORM_THREADS / 32];
    const i64 base = (i64)blockIdx.x * n;
    float xv[V], gv[V], wv[V];
#pragma unroll
    for (int i = 0; i < V; i++) {
        const int j = threadIdx.x + i * TD_NORM_THREADS;
        xv[i] = gv[i] = wv[i] = 0.f;
        if (j < n) xv[i] = x[base + j], gv[i] = dy[base + j], wv[i] = w[j];
    }
    double mean = 0.0;
    if (mode == 1) {
        double s = 0.0;
#pragma unroll
        for (int i = 0; i < V; i++)
            if (threadIdx.x + i * TD_NORM_THREADS < n) s += (double)xv[i];
        mean = td_block_sum(s, red) / n;
    }
    double ss = 0.0;
#pragma unroll
    for (int i = 0; i < V; i++)
        if (threadIdx.x + i * TD_NORM_THREADS < n) {
            double v = (double)xv[i] - mean;
            ss += v * v;
        }
    double inv = 1.0 / sqrt(td_block_sum(ss, red) / n + (double)eps);
    double sg = 0.0, sgx = 0.0;
#pragma unroll
    for (int i = 0; i < V; i++)
        if (threadIdx.x + i * TD_NORM_THREADS < n) {
            double g = (double)gv[i] * (double)wv[i];
            sg += g;
            sgx += g * ((double)xv[i] - mean) * inv;
        }
    double mg = mode == 1 ? td_block_sum(sg, red) / n : 0.0;
    double mgx = td_block_sum(sgx, red) / n;
#pragma unroll
    for (int i = 0; i < V; i++) {
        const int j = threadIdx.x + i * TD_NORM_THREADS;
        if (j < n) {
            double g = (double)gv[i] * (double)wv[i];
            double xh = ((double)xv[i] - mean) * inv;
            dx[base + j] = (float)(inv * (g - mg - xh * mgx));
        }
    }
}

#define TD_NORM_BWD_V(V)                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(TD_NORM_THREADS)                                                                         \
        k_norm_backward_v##V(float* dx, const float* dy, const float* x, const float* w, int n, float eps, int mode) {                    \
        norm_backward_v<V>(dx, dy, x, w, n, eps, mode);                                                                                   \
    }
TD_NORM_BWD_V(1)
TD_NORM_BWD_V(2)
TD_NORM_BWD_V(4)
TD_NORM_BWD_V(8)
TD_NORM_BWD_V(12)
TD_NORM_BWD_V(16)

// k_rope_inverse: k_rope (elementwise.cu) with the angle negated: the same
// angle, sine and cosine in double, the sine's sign flipped (sin(−a) =
// −sin(a) exactly).
extern "C" __global__ void k_rope_inverse(float* x, i64 pairs, int seqlen, int heads, int headdim, int rot, double theta, int pos0) {
    int half = rot / 2;
    TD_GRID_STRIDE(i, pairs) {
        int d = (int)(i % half);
        i64 bth = i / half;
        int t = (int)((bth / heads) % seqlen);
        i64 base = bth * headdim;
        double inv = pow(theta, -2.0 * (double)d / (double)rot);
        double s, c;
        sincos((double)(pos0 + t) * inv, &s, &c);
        double x1 = (double)x[base + d], x2 = (double)x[base + d + half];
        x[base + d] = (float)(x1 * c + x2 * s);
        x[base + d + half] = (float)(x2 * c - x1 * s);
    }
}

// ---- Dropout: Go's math/rand/v2 PCG (128-bit LCG, DXSM output), row i
// seeded (seed, splitmix64(i)).

struct td_u128 { u64 hi, lo; };

__device__ __forceinline__ u64 td_mulhi(u64 a, u64 b) {
#ifdef MATSURGERY_EMU
    return (u64)(((unsigned __int128)a * b) >> 64);
#else
    return __umul64hi(a, b);
#endif
}

// a·b mod 2^128.
__device__ __forceinline__ td_u128 td_mul(td_u128 a, td_u128 b) {
    td_u128 r;
    r.lo = a.lo * b.lo;
    r.hi = td_mulhi(a.lo, b.lo) + a.lo * b.hi + a.hi * b.lo;
    return r;
}

// a + b mod 2^128.
__device__ __forceinline__ td_u128 td_add(td_u128 a, td_u128 b) {
    td_u128 r;
    r.lo = a.lo + b.lo;
    r.hi = a.hi + b.hi + (r.lo < a.lo ? 1ull : 0ull);
    return r;
}

#define TD_PCG_MUL_HI 2549297995355413924ull
#define TD_PCG_MUL_LO 4865540595714422341ull
#define TD_PCG_INC_HI 6364136223846793005ull
#define TD_PCG_INC_LO 1442695040888963407ull

__device__ __forceinline__ u64 td_splitmix64(u64 x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// k_pcg_jump: table[j] = (M, C) with state_{j+1} = M·state_0 + C, the LCG
// advanced j+1 steps (square and multiply); 4 words an entry: M.hi, M.lo,
// C.hi, C.lo.
extern "C" __global__ void k_pcg_jump(u64* table, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    td_u128 accM = {0, 1}, accC = {0, 0}, curM = {TD_PCG_MUL_HI, TD_PCG_MUL_LO}, curC = {TD_PCG_INC_HI, TD_PCG_INC_LO};
    td_u128 one = {0, 1};
    for (u64 k = (u64)j + 1; k; k >>= 1) {
        if (k & 1) {
            accM = td_mul(accM, curM);
            accC = td_add(td_mul(accC, curM), curC);
        }
        curC = td_mul(td_add(curM, one), curC);
        curM = td_mul(curM, curM);
    }
    table[4 * (i64)j] = accM.hi;
    table[4 * (i64)j + 1] = accM.lo;
    table[4 * (i64)j + 2] = accC.hi;
    table[4 * (i64)j + 3] = accC.lo;
}

// k_dropout: out[i, j] = x[i, j]·scale when the j-th Uint64 of row i's
// stream, shifted right by 11, is ≥ thr; 0 otherwise. out may alias x.
extern "C" __global__ void k_dropout(float* out, const float* x, const u64* table, i64 total, int d, u64 seed, u64 thr, float scale) {
    TD_GRID_STRIDE(i, total) {
        i64 row = i / d;
        int j = (int)(i - row * d);
        const u64* e = table + 4 * (i64)j;
        td_u128 M = {e[0], e[1]}, C = {e[2], e[3]}, s0 = {seed, td_splitmix64((u64)row)};
        td_u128 s = td_add(td_mul(M, s0), C);
        u64 hi = s.hi;
        hi ^= hi >> 32;
        hi *= 0xda942042e4dd58b5ull;
        hi ^= hi >> 48;
        hi *= (s.lo | 1ull);
        out[i] = (hi >> 11) >= thr ? x[i] * scale : 0.f;
    }
}

// k_dropout_rows: k_dropout (ops' rowOpsV1 = false) on a grid of (column
// blocks, row strides): thread j reads its jump-table entry once and walks
// rows blockIdx.y, blockIdx.y + gridDim.y, … With s0 = (seed, r), r =
// splitmix64(row), the state M·s0 + C mod 2^128 is lo = M.lo·r + C.lo,
// hi = mulhi(M.lo, r) + M.hi·r + (M.lo·seed + C.hi) + carry: the same
// bits as td_add(td_mul(M, s0), C), the row-independent part hoisted.
extern "C" __global__ void k_dropout_rows(float* out, const float* x, const u64* table, int rows, int d, u64 seed, u64 thr, float scale) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    const u64* e = table + 4 * (i64)j;
    u64 mhi = e[0], mlo = e[1], clo = e[3];
    u64 k = mlo * seed + e[2];
    for (int row = blockIdx.y; row < rows; row += gridDim.y) {
        u64 r = td_splitmix64((u64)row);
        u64 lo0 = mlo * r, lo = lo0 + clo;
        u64 hi = td_mulhi(mlo, r) + mhi * r + k + (lo < lo0 ? 1ull : 0ull);
        hi ^= hi >> 32;
        hi *= 0xda942042e4dd58b5ull;
        hi ^= hi >> 48;
        hi *= (lo | 1ull);
        i64 i = (i64)row * d + j;
        out[i] = (hi >> 11) >= thr ? x[i] * scale : 0.f;
    }
}

// ---- Softmax attention through GEMMs: the row-wise step between them.

#define TD_ATT_ROWS 4 // rows (warps) a block
#define TD_NEG_INF __int_as_float(0xff800000)

// k_attn_softmax_rows: for one block of nb query rows (positions i0 …)
// and kv group g = blockIdx.y, head h = g·rep + j, row i of S [g, nb, lk]
// (raw scores q·k; rows ld ≥ lk elements apart) becomes P = softmax(scale·S) over the keys s < lk (and
// s ≤ i0 + i when causal; other keys get 0). Backward (dP not null): with
// D = Σ_d dO[i, h, d]·O[i, h, d] and dS = P∘(dP − D), P and dS are
// written either over S and dP (bf == 0) or, rounded, to Pb and dSb.
// dO and O point at row i0 of their batch ([rows, H, p] layout). The
// maximum and the sum of exponentials are taken online per lane, then
// across the warp; sums in double.
extern "C" __global__ void __launch_bounds__(32 * TD_ATT_ROWS) k_attn_softmax_rows(float* S, float* dP, bf16_t* Pb, bf16_t* dSb, int bf,
                                                                                   const float* dO, const float* O, int nb, int lk, int ld, int i0,
                                                                                   int H, int p, int rep, int j, float scale, int causal) {
    int lane = threadIdx.x & 31, i = blockIdx.x * TD_ATT_ROWS + (threadIdx.x >> 5);
    if (i >= nb) return; // whole warps only: no collective below spans warps
    int g = blockIdx.y, h = g * rep + j, t = i0 + i;
    int last = causal ? min(lk, t + 1) : lk; // keys [0, last) are seen
    i64 row = ((i64)g * nb + i) * ld;
    float* s = S + row;
    float m = TD_NEG_INF;
    double sum = 0.0;
    for (int k = lane; k < last; k += 32) {
        float v = scale * s[k];
        if (v > m) {
            sum = sum * (double)expf(m - v) + 1.0;
            m = v;
        } else {
            sum += (double)expf(v - m);
        }
    }
    float M = warp_max(m);
    double tot = warp_sum_d(m == TD_NEG_INF ? 0.0 : sum * (double)expf(m - M));
    float inv = (float)(1.0 / tot);
    float D = 0.f;
    if (dP) {
        double acc = 0.0;
        const float* a = dO + ((i64)i * H + h) * p;
        const float* b = O + ((i64)i * H + h) * p;
        for (int d = lane; d < p; d += 32) acc += (double)a[d] * (double)b[d];
        D = (float)warp_sum_d(acc);
    }
    for (int k = lane; k < lk; k += 32) {
        float pk = k < last ? expf(scale * s[k] - M) * inv : 0.f;
        float ds = 0.f;
        if (dP) ds = pk * (dP[row + k] - D);
        if (bf) {
            Pb[row + k] = f32_to_bf16(pk);
            if (dP) dSb[row + k] = f32_to_bf16(ds);
        } else {
            s[k] = pk;
            if (dP) dP[row + k] = ds;
        }
    }
}
