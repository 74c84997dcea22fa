// ssd_common.cu: pieces shared by the chunked scan kernels (ssd_cc.cu on
// the CUDA cores, ssd_tc.cu and ssd_tc2.cu on the tensor cores).
//
// Notation (SPEC §3): within a chunk, a_s = dt_s·A, cs_l = Σ_{s≤l} a_s,
//   Y_diag[l] = Σ_{s≤l} (C_l·B_s)·exp(cs_l − cs_s)·dt_s·x_s,
//   Y_off[l]  = exp(cs_l)·H·C_l   (H: the state entering the chunk),
//   H'        = exp(cs_last)·H + Σ_s exp(cs_last − cs_s)·dt_s·x_s ⊗ B_s.
// Every exponent is ≤ 0 (differences are clamped with fminf(·, 0)).

#define SSD_SEG 4 // tokens per lane in the chunk scans: chunks of at most 128
#define LOG2E 1.4426950408889634f

// Loads dt of the chunk starting at token t0 into dv: dv[k] is token
// lane·SSD_SEG + k of the chunk (0 past the chunk or the sequence). Token t
// of the sequence is element base + t·H of dt; a null dt means 1.
__device__ __forceinline__ void chunk_load_dt(float* dv, const void* dt, int dtbf, i64 base, int H, int t0, int q, int L) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int k = 0; k < SSD_SEG; k++) {
        int i = lane * SSD_SEG + k, t = t0 + i;
        dv[k] = (i < q && t < L) ? (dt ? ld_elem(dt, dtbf, base + (i64)t * H) : 1.f) : 0.f;
    }
}

// Per-chunk scalars, computed by one warp into shared memory, for the q
// tokens of the chunk: cs in base-2 units (a2 = A·log2(e), so exp(x) is
// exp2f of the scaled value), exp(cs), the state weights
// wd_s = dt_s·exp(cs_last − cs_s), and dt itself.
__device__ __forceinline__ void chunk_scan_warp(const float* dv, float a2, int q, float* cs, float* ecs, float* wd, float* dts) {
    int lane = threadIdx.x & 31;
    float loc[SSD_SEG];
    float run = 0.f;
#pragma unroll
    for (int k = 0; k < SSD_SEG; k++) {
        run += dv[k] * a2;
        loc[k] = run;
    }
    float inc = run;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        float v = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += v;
    }
    float excl = __shfl_up_sync(0xffffffffu, inc, 1);
    if (lane == 0) excl = 0.f;
    float total = __shfl_sync(0xffffffffu, inc, 31);
#pragma unroll
    for (int k = 0; k < SSD_SEG; k++) {
        int t = lane * SSD_SEG + k;
        if (t < q) {
            float c = excl + loc[k];
            cs[t] = c;
            ecs[t] = exp2f(fminf(c, 0.f));
            wd[t] = dv[k] * exp2f(fminf(total - c, 0.f));
            dts[t] = dv[k];
        }
    }
}

// The tensor-core scans' (ssd_tc.cu, ssd_tc2.cu) per-chunk scalars, for
// chunks of 32·T tokens, T tokens a lane (T deduced from dv's length).

// dt of the chunk starting at token t0: dv[k] is token T·lane + k of the
// chunk (0 past the sequence). Token t of the sequence is element
// base + t·H of dt; a null dt means 1.
template <int T>
__device__ __forceinline__ void tc_load_dt(float (&dv)[T], const void* dt, int dtbf, i64 base, int H, int t0, int L) {
    const int t = t0 + T * (threadIdx.x & 31);
#pragma unroll
    for (int k = 0; k < T; k++) dv[k] = t + k < L ? (dt ? ld_elem(dt, dtbf, base + (i64)(t + k) * H) : 1.f) : 0.f;
}

// The scalars of a chunk of Q = 32·T tokens, by one warp, at sc: cs
// (base-2 cumulative sum of dt·A), exp(cs), the state weights
// wd_s = dt_s·exp(cs_last − cs_s), and dt; sc[j·Q + t] for j = 0..3.
template <int T>
__device__ __forceinline__ void tc_chunk_scan(const float (&dv)[T], float a2, float* sc) {
    constexpr int Q = 32 * T;
    const int lane = threadIdx.x & 31;
    float loc[T];
    float run = 0.f;
#pragma unroll
    for (int k = 0; k < T; k++) loc[k] = run += dv[k] * a2;
    float inc = run;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float v = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += v;
    }
    float excl = __shfl_up_sync(0xffffffffu, inc, 1);
    if (lane == 0) excl = 0.f;
    const float total = __shfl_sync(0xffffffffu, inc, 31);
#pragma unroll
    for (int k = 0; k < T; k++) {
        const int t = T * lane + k;
        const float c = excl + loc[k];
        sc[t] = c;
        sc[Q + t] = ex2_ftz(fminf(c, 0.f));
        sc[2 * Q + t] = dv[k] * ex2_ftz(fminf(total - c, 0.f));
        sc[3 * Q + t] = dv[k];
    }
}
