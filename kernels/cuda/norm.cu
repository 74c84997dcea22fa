// norm.cu: normalisations over groups of contiguous channels, one warp per
// (row, group); sums in double; each lane reads its elements twice and
// writes them last, so out may alias the inputs.

// k_group_norm: mode 0 = RMSNorm of y·silu(z) (z may be null), mode 1 =
// LayerNorm (mean and biased variance, two passes), over groups of size
// group of rows of n channels; weight and bias index the channel within
// the row (bias may be null).
extern "C" __global__ void k_group_norm(void* out, int obf, const void* y, int ybf, const void* z, int zbf, const void* w, int wbf,
                                        const void* bias, int bbf, i64 groups, int n, int group, float eps, int mode) {
    int lane = threadIdx.x & 31;
    i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    i64 nwarps = ((i64)gridDim.x * blockDim.x) >> 5;
    for (i64 gi = warp; gi < groups; gi += nwarps) {
        i64 base = gi * group;             // first element of the group
        int c0 = (int)(base % n);          // its channel within the row
        double mean = 0.0;
        if (mode == 1) {
            double s = 0.0;
            for (int j = lane; j < group; j += 32) s += (double)ld_elem(y, ybf, base + j);
            mean = warp_sum_d(s) / group;
        }
        double ss = 0.0;
        for (int j = lane; j < group; j += 32) {
            double v = (double)ld_elem(y, ybf, base + j);
            if (z) {
                double zv = (double)ld_elem(z, zbf, base + j);
                v *= zv / (1.0 + exp(-zv));
            }
            v -= mean;
            ss += v * v;
        }
        double inv = 1.0 / sqrt(warp_sum_d(ss) / group + (double)eps);
        for (int j = lane; j < group; j += 32) {
            double v = (double)ld_elem(y, ybf, base + j);
            if (z) {
                double zv = (double)ld_elem(z, zbf, base + j);
                v *= zv / (1.0 + exp(-zv));
            }
            double r = (v - mean) * inv * (double)ld_elem(w, wbf, c0 + j);
            if (bias) r += (double)ld_elem(bias, bbf, c0 + j);
            st_elem(out, obf, base + j, (float)r);
        }
    }
}

// ---- Version 2 (ops.go's rowOpsV1 = false): one block of blockDim.x
// threads (a multiple of 32, at most RN_THREADS) per group, the group read
// once into registers (at most RN_SLOTS values a thread, so groups of up to
// RN_THREADS·RN_SLOTS channels), then the same statistics in double as
// k_group_norm (block sums in a fixed order) and the same per-element
// arithmetic. vec: thread t holds elements 4(t + k·blockDim.x) … +3, read
// and written as vectors (group and n multiples of 4, every operand
// aligned to 4 of its elements). Each thread writes only the elements it
// read, so out may alias y or z.

#define RN_THREADS 256
#define RN_SLOTS 16

// Four elements i … i+3 (i % 4 == 0) of a float32 or bf16 tensor.
__device__ __forceinline__ void rn_ld4(float* d, const void* p, int bf, i64 i) {
    ew_f4 v = bf ? ew_bf4_to_f4(((const ew_u2*)p)[i >> 2]) : ((const ew_f4*)p)[i >> 2];
    d[0] = v.x;
    d[1] = v.y;
    d[2] = v.z;
    d[3] = v.w;
}
__device__ __forceinline__ void rn_st4(void* p, int bf, i64 i, const float* s) {
    ew_f4 v;
    v.x = s[0];
    v.y = s[1];
    v.z = s[2];
    v.w = s[3];
    if (bf) ((ew_u2*)p)[i >> 2] = ew_f4_to_bf4(v);
    else ((ew_f4*)p)[i >> 2] = v;
}

// Sum over the block (red: RN_THREADS/32 doubles of shared memory), in
// warp order; every thread gets the total.
__device__ __forceinline__ double rn_block_sum(double v, double* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads(); // red may still be read by the previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double t = 0.0;
    for (int w = 0; w < nw; w++) t += red[w];
    return t;
}

template <int V>
__device__ __forceinline__ void rn_group_norm(void* out, int obf, const void* y, int ybf, const void* z, int zbf, const void* w, int wbf,
                                              const void* bias, int bbf, i64 groups, int n, int group, float eps, int mode, double* red) {
    const int T = blockDim.x;
    for (i64 gi = blockIdx.x; gi < groups; gi += gridDim.x) {
        i64 base = gi * group;
        int c0 = (int)(base % n);
        double v[RN_SLOTS];
        double s = 0.0;
#pragma unroll
        for (int k = 0; k < RN_SLOTS / V; k++) {
            int j = (threadIdx.x + k * T) * V;
            if (j < group) {
                float yv[V], zv[V];
                if constexpr (V == 4) {
                    rn_ld4(yv, y, ybf, base + j);
                    if (z) rn_ld4(zv, z, zbf, base + j);
                } else {
                    yv[0] = ld_elem(y, ybf, base + j);
                    if (z) zv[0] = ld_elem(z, zbf, base + j);
                }
#pragma unroll
                for (int e = 0; e < V; e++) {
                    double a = (double)yv[e];
                    if (z) {
                        double b = (double)zv[e];
                        a *= b / (1.0 + exp(-b));
                    }
                    v[k * V + e] = a;
                    s += a;
                }
            }
        }
        double mean = 0.0;
        if (mode == 1) mean = rn_block_sum(s, red) / group;
        double ss = 0.0;
#pragma unroll
        for (int k = 0; k < RN_SLOTS / V; k++) {
            int j = (threadIdx.x + k * T) * V;
            if (j < group) {
#pragma unroll
                for (int e = 0; e < V; e++) {
                    double d = v[k * V + e] - mean;
                    ss += d * d;
                }
            }
        }
        double inv = 1.0 / sqrt(rn_block_sum(ss, red) / group + (double)eps);
#pragma unroll
        for (int k = 0; k < RN_SLOTS / V; k++) {
            int j = (threadIdx.x + k * T) * V;
            if (j < group) {
                float wv[V], bv[V], r[V];
                if constexpr (V == 4) {
                    rn_ld4(wv, w, wbf, c0 + j);
                    if (bias) rn_ld4(bv, bias, bbf, c0 + j);
                } else {
                    wv[0] = ld_elem(w, wbf, c0 + j);
                    if (bias) bv[0] = ld_elem(bias, bbf, c0 + j);
                }
#pragma unroll
                for (int e = 0; e < V; e++) {
                    double a = (v[k * V + e] - mean) * inv * (double)wv[e];
                    if (bias) a += (double)bv[e];
                    r[e] = (float)a;
                }
                if constexpr (V == 4) rn_st4(out, obf, base + j, r);
                else st_elem(out, obf, base + j, r[0]);
            }
        }
    }
}

// k_row_norm: k_group_norm's operation (same arguments), a block a group.
extern "C" __global__ void __launch_bounds__(RN_THREADS) k_row_norm(void* out, int obf, const void* y, int ybf, const void* z, int zbf, const void* w,
                                                                    int wbf, const void* bias, int bbf, i64 groups, int n, int group, float eps,
                                                                    int mode, int vec) {
    __shared__ double red[RN_THREADS / 32];
    if (vec) rn_group_norm<4>(out, obf, y, ybf, z, zbf, w, wbf, bias, bbf, groups, n, group, eps, mode, red);
    else rn_group_norm<1>(out, obf, y, ybf, z, zbf, w, wbf, bias, bbf, groups, n, group, eps, mode, red);
}
