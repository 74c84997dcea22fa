// train_mamba_scan.cu: the backward of the chunked Mamba-2 scan (SPEC §3)
// on the CUDA cores (x, B and C f32 or bf16, widened exactly on load):
// float32 products and sums, except the C·Bᵀ and gy·xᵀ dot products, the
// chunk cumsums and the decay gradient's sums, which are in double (see
// da_t below: dA cancels hundreds of times over at the training size).
// Compiled per shape with -DMB_Q (tokens a chunk, a
// multiple of 4 up to 64), -DMB_P (headdim), -DMB_N (d_state), -DMB_T
// (threads of k_mamba_scan_bwd) and -DMB_T1 (threads of
// k_mamba_chunk_states); scanBwdPlan in train_mamba.go chooses them and
// mirrors the shared-memory layout below.
//
// For one (batch, head) and one chunk of q ≤ Q tokens, with a_s = dt_s·A:
//   x̄_s = dt_s·x_s, cs_l = Σ_{s≤l} a_s (≤ 0), e_l = exp(cs_l),
//   r_s = exp(cs_last − cs_s), H the state entering the chunk and dH the
//   gradient of the state leaving it, gy = dy.
// Pass 1, k_mamba_chunk_states, every chunk at once: the chunk's own part
//   of the state leaving it, Sloc = Σ_s r_s·x̄_s ⊗ B_s, its outputs' part of
//   the gradient of the state entering it, dSloc = Σ_l e_l·gy_l ⊗ C_l, and
//   its decay exp(cs_last). k_mamba_state_pass (train_mamba.cu) runs the
//   two recurrences between chunks: H_{c+1} = decay_c·H_c + Sloc_c forward,
//   dH_c = decay_c·dH_{c+1} + dSloc_c backward.
// Pass 2, k_mamba_scan_bwd, every chunk at once, from H and dH:
//   dx̄_s = Σ_{l≥s} e^{cs_l−cs_s}(C_l·B_s)·gy_l + r_s·dH·B_s
//   dB_s = Σ_{l≥s} e^{cs_l−cs_s}(gy_l·x̄_s)·C_l + r_s·dHᵀ·x̄_s
//   dC_l = Σ_{s≤l} e^{cs_l−cs_s}(gy_l·x̄_s)·B_s + e_l·Hᵀ·gy_l
//   dx_s = dt_s·dx̄_s + D·gy_s, ddt_s = A·da_s + ⟨dx̄_s, x_s⟩,
//   dA += Σ dt_s·da_s, dD += Σ ⟨gy_s, x_s⟩,
// and the decay's gradient da_t = exp(a_t)·⟨G_t, S_{t−1}⟩ (G_t = ∂L/∂S_t)
// expanded into sums of positive-weight terms, every exponent ≤ 0:
//   da_t = Σ_{s<t≤l} e^{cs_l−cs_s}(gy_l·x̄_s)(C_l·B_s)
//        + Σ_{l≥t} e_l·gy_l·(H·C_l) + Σ_{s<t} r_s·x̄_s·(dH·B_s)
//        + e^{cs_last}·⟨dH, H⟩.
// The first term is a sum over the rectangle l ≥ t > s of the strictly
// lower triangle M[l][s]: suffix sums down each column, then a prefix sum
// along row t; nothing is subtracted (the reverse cumulative sum of the
// chunked form's cumsum gradient would cancel). dA = Σ_t dt_t·da_t can
// still be hundreds of times smaller than Σ_t |dt_t·da_t| (random dy,
// 1428 tokens): with float32 dot products in M the H200 gave dA 1.8e-5
// off; in double, 1.5e-6 on the CPU emulator (TestScanBackwardCancellingDA).
//
// Every reduction has a fixed order: results do not change run to run.

#define QQ MB_Q
#define PP MB_P
#define NN MB_N
#define R4(v) (((v) + 3) / 4 * 4)
// Row stride (floats) of a shared tile: a multiple of 4 (16-byte rows for
// vector loads) holding an odd number of 16-byte units (rows 1 apart fall
// in different bank groups).
#define LDV(v) ((R4(v) / 4) % 2 ? R4(v) : R4(v) + 4)
#define LDP LDV(PP)
#define LDN LDV(NN)
#define LDQ LDV(QQ)
#define P4 R4(PP)
#define N4 R4(NN)
#define TQ (QQ / 4)             // 4-row tiles of a chunk
#define TPC (P4 / 4)            // 4-column tiles of headdim
#define TNC (N4 / 4)            // 4-column tiles of d_state
#define TRI (TQ * (TQ + 1) / 2) // causal 4×4 tiles of a Q×Q matrix
#define LOG2E_D 1.4426950408889634

#if QQ % 4 != 0 || QQ > 64 || QQ < 4
#error "train_mamba_scan needs MB_Q a multiple of 4 in [4, 64]"
#endif

#ifdef MATSURGERY_EMU
struct __attribute__((aligned(16))) mb_f4 {
    float x, y, z, w;
};
#else
typedef float4 mb_f4;
#endif

// d[0..3] = the 4 floats at p (16-byte aligned shared memory).
__device__ __forceinline__ void mb_ld4(float* d, const float* p) {
    mb_f4 v = *(const mb_f4*)p;
    d[0] = v.x;
    d[1] = v.y;
    d[2] = v.z;
    d[3] = v.w;
}

// acc[i][j] += Σ_{k0 ≤ k < k1} A(m0+i, k)·B(k, n0+j) over shared tiles,
// k0 and k1 multiples of 4. AK: A(m, k) = a[m·lda + k], else a[k·lda + m];
// BK: B(k, n) = b[n·ldb + k], else b[k·ldb + n]. Eight 16-byte loads feed
// 64 multiply-adds.
template <bool AK, bool BK>
__device__ __forceinline__ void mb_mm4(float (&acc)[4][4], const float* a, int lda, const float* b, int ldb, int m0, int n0, int k0, int k1) {
    for (int k = k0; k < k1; k += 4) {
        float av[4][4], bv[4][4]; // av[i][kk] = A(m0+i, k+kk), bv[kk][j] = B(k+kk, n0+j)
        if constexpr (AK) {
#pragma unroll
            for (int i = 0; i < 4; i++) mb_ld4(av[i], a + (m0 + i) * lda + k);
        } else {
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                float t[4];
                mb_ld4(t, a + (k + kk) * lda + m0);
#pragma unroll
                for (int i = 0; i < 4; i++) av[i][kk] = t[i];
            }
        }
        if constexpr (BK) {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float t[4];
                mb_ld4(t, b + (n0 + j) * ldb + k);
#pragma unroll
                for (int kk = 0; kk < 4; kk++) bv[kk][j] = t[kk];
            }
        } else {
#pragma unroll
            for (int kk = 0; kk < 4; kk++) mb_ld4(bv[kk], b + (k + kk) * ldb + n0);
        }
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i][kk], bv[kk][j], acc[i][j]);
    }
}

// acc[i][j] += Σ_{k < k1} a[(m0+i)·lda + k]·b[(n0+j)·ldb + k] (both
// operands' rows along k, k1 a multiple of 4) with double products and
// sums: the dot products of C·Bᵀ and gy·xᵀ, which the decay's gradient
// adds up with heavy cancellation (dA of a head at the training size is
// hundreds of times smaller than Σ |dt·da|), come out correctly rounded.
__device__ __forceinline__ void mb_mm4_kk_d(double (&acc)[4][4], const float* a, int lda, const float* b, int ldb, int m0, int n0, int k1) {
    for (int k = 0; k < k1; k += 4) {
        float av[4][4], bv[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++) mb_ld4(av[i], a + (m0 + i) * lda + k);
#pragma unroll
        for (int j = 0; j < 4; j++) mb_ld4(bv[j], b + (n0 + j) * ldb + k);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            double ad[4], bd[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                ad[i] = (double)av[i][kk];
                bd[i] = (double)bv[i][kk];
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fma(ad[i], bd[j], acc[i][j]);
        }
    }
}

__device__ __forceinline__ void mb_zero(float (&acc)[4][4]) {
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
}

// Warp 0 of the block: dts[i] = dt of token i of the chunk (0 at i ≥ q)
// and cs[i] = Σ_{s≤i} dt_s·A in base-2 units (exp2 of it is exp of the
// natural sum), in double: the weights exp(cs_l − cs_s) then lose nothing
// to the size of cs_l and cs_s (float32 sums deep into a chunk with strong
// decays carry absolute errors of 1e-5 in the exponent). Token i is element
// base + i·H of dt.
__device__ __forceinline__ void mb_chunk_cumsum(double* cs, float* dts, const void* dt, int dtbf, i64 base, int H, int q, double a2) {
    const int lane = threadIdx.x & 31;
    const int SEG = (QQ + 31) / 32;
    double loc[SEG];
    double run = 0.0;
#pragma unroll
    for (int k = 0; k < SEG; k++) {
        int i = lane * SEG + k;
        float d = i < q ? ld_elem(dt, dtbf, base + (i64)i * H) : 0.f;
        if (i < QQ) dts[i] = d;
        run += (double)d * a2;
        loc[k] = run;
    }
    double inc = run;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        double v = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += v;
    }
    double excl = __shfl_up_sync(0xffffffffu, inc, 1);
    if (lane == 0) excl = 0.0;
#pragma unroll
    for (int k = 0; k < SEG; k++) {
        int i = lane * SEG + k;
        if (i < QQ) cs[i] = excl + loc[k];
    }
}

// Element (row, col) of a [rows, cols] operand of the scan for token row
// of the chunk: 0 past the chunk's q tokens or the cols columns.
__device__ __forceinline__ float mb_tok(const void* p, int bf, i64 rowBase, i64 rowStride, int row, int col, int q, int cols) {
    return (row < q && col < cols) ? ld_elem(p, bf, rowBase + (i64)row * rowStride + col) : 0.f;
}

// Shared layout of k_mamba_chunk_states (floats); chunkStatesShared in
// train_mamba.go mirrors it.
#define CS_XW 0                     // [QQ][LDP] r_s·dt_s·x_s
#define CS_GE (CS_XW + QQ * LDP)    // [QQ][LDP] e_l·gy_l
#define CS_B (CS_GE + QQ * LDP)     // [QQ][LDN]
#define CS_C (CS_B + QQ * LDN)      // [QQ][LDN]
#define CS_CS (CS_C + QQ * LDN)     // double [QQ] cs
#define CS_DT (CS_CS + 2 * QQ)      // [QQ] dt
#define CS_END (CS_DT + QQ)

// k_mamba_chunk_states: block (batch·head, chunk) = blockIdx.x (chunk
// fastest) writes Sloc and dSloc [P][N] of its chunk into sloc and dsloc
// ([batch·head][chunk][P][N]) and exp(cs_last) into decay.
extern "C" __global__ void __launch_bounds__(MB_T1)
    k_mamba_chunk_states(float* sloc, float* dsloc, float* decay, const float* dy, const void* x, int xbf, const void* dt, int dtbf,
                         const void* A, int abf, const void* B, int bbf, const void* C, int cbf, int L, int H, int G, int nc) {
    float* sm = (float*)dyn_smem;
    float* Xw = sm + CS_XW;
    float* Ge = sm + CS_GE;
    float* Bs = sm + CS_B;
    float* Cs = sm + CS_C;
    double* cs = (double*)(sm + CS_CS);
    float* dts = sm + CS_DT;

    const int tid = threadIdx.x;
    const i64 bhc = blockIdx.x;
    const int c = (int)(bhc % nc);
    const i64 bh = bhc / nc;
    const int h = (int)(bh % H);
    const i64 b = bh / H;
    const int g = h / (H / G);
    const int t0 = c * QQ, q = min(QQ, L - t0);
    const i64 row0 = b * L + t0;

    if (tid < 32) mb_chunk_cumsum(cs, dts, dt, dtbf, row0 * H + h, H, q, (double)ld_elem(A, abf, h) * LOG2E_D);
    __syncthreads();
    const double last = cs[q - 1];
    for (int e = tid; e < QQ * P4; e += MB_T1) {
        int l = e / P4, p = e % P4;
        float wd = dts[l] * exp2f(fminf((float)(last - cs[l]), 0.f));
        Xw[l * LDP + p] = wd * mb_tok(x, xbf, row0 * H * PP + (i64)h * PP, (i64)H * PP, l, p, q, PP);
        Ge[l * LDP + p] = exp2f(fminf((float)cs[l], 0.f)) * mb_tok(dy, 0, row0 * H * PP + (i64)h * PP, (i64)H * PP, l, p, q, PP);
    }
    for (int e = tid; e < QQ * N4; e += MB_T1) {
        int l = e / N4, n = e % N4;
        Bs[l * LDN + n] = mb_tok(B, bbf, row0 * G * NN + (i64)g * NN, (i64)G * NN, l, n, q, NN);
        Cs[l * LDN + n] = mb_tok(C, cbf, row0 * G * NN + (i64)g * NN, (i64)G * NN, l, n, q, NN);
    }
    __syncthreads();

    float* so = sloc + bhc * PP * NN;
    float* dso = dsloc + bhc * PP * NN;
    for (int tile = tid; tile < TPC * TNC; tile += MB_T1) {
        const int p0 = tile / TNC * 4, n0 = tile % TNC * 4;
        float acc[4][4];
#pragma unroll
        for (int pass = 0; pass < 2; pass++) {
            mb_zero(acc);
            if (pass == 0) mb_mm4<false, false>(acc, Xw, LDP, Bs, LDN, p0, n0, 0, QQ);
            else mb_mm4<false, false>(acc, Ge, LDP, Cs, LDN, p0, n0, 0, QQ);
            float* out = pass == 0 ? so : dso;
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (p0 + i < PP && n0 + j < NN) out[(p0 + i) * NN + n0 + j] = acc[i][j];
        }
    }
    if (tid == 0) decay[bhc] = exp2f(fminf((float)last, 0.f));
}

// Shared layout of k_mamba_scan_bwd (floats); scanBwdShared in
// train_mamba.go mirrors it.
#define SB_X 0                       // [QQ][LDP] x
#define SB_G (SB_X + QQ * LDP)       // [QQ][LDP] gy
#define SB_B (SB_G + QQ * LDP)       // [QQ][LDN] B
#define SB_C (SB_B + QQ * LDN)       // [QQ][LDN] C
#define SB_S1 (SB_C + QQ * LDN)      // [QQ][LDQ] C·Bᵀ, then w∘(C·Bᵀ)
#define SB_S2 (SB_S1 + QQ * LDQ)     // [QQ][LDQ] gy·xᵀ, then w∘(gy·x̄ᵀ)
#define SB_S3 (SB_S2 + QQ * LDQ)     // [QQ][LDQ] M, then its column suffix sums
#define SB_H (SB_S3 + QQ * LDQ)      // [P4][LDN] H, then dH
#define SB_UP (SB_H + P4 * LDN)      // [QQ][TNC] partial e_l·gy_l·(H·C_l)
#define SB_VP (SB_UP + QQ * TNC)     // [QQ][TPC] partial r_s·x̄_s·(dH·B_s)
#define SB_XP (SB_VP + QQ * TPC)     // [QQ][TPC] partial ⟨dx̄_s, x_s⟩
#define SB_CS (SB_XP + QQ * TPC)     // double [QQ] each: cs, u, v, ⟨dx̄, x⟩
#define SB_U (SB_CS + 2 * QQ)
#define SB_V (SB_U + 2 * QQ)
#define SB_XD (SB_V + 2 * QQ)
#define SB_DT (SB_XD + 2 * QQ)       // [QQ] each: dt, e, r
#define SB_E (SB_DT + QQ)
#define SB_R (SB_E + QQ)
#define SB_RED (SB_R + QQ)           // double [3][32] per-warp sums
#define SB_END (SB_RED + 192)

// k_mamba_scan_bwd: block (batch·head, chunk) = blockIdx.x (chunk fastest)
// writes dx, ddt and the chunk's rows of dB and dC (into dBo and dCo with
// ho heads: the groups themselves when each group has one head, else
// per-head rows that k_mamba_group_sum adds up), and the chunk's parts of
// dA and dD into partA and partD. hst and dhst ([batch·head][chunk][P][N])
// hold H entering and dH leaving each chunk (k_mamba_state_pass).
// Shared memory allows one block a multiprocessor at the usual sizes: the
// register budget is sized for that.
extern "C" __global__ void __launch_bounds__(MB_T, 1)
    k_mamba_scan_bwd(float* dx, float* ddt, float* dBo, float* dCo, double* partA, double* partD, const float* dy, const void* x, int xbf,
                     const void* dt, int dtbf, const void* A, int abf, const void* B, int bbf, const void* C, int cbf, const void* D, int dbf,
                     const float* hst, const float* dhst, int L, int H, int G, int nc, int ho) {
    float* sm = (float*)dyn_smem;
    float* Xs = sm + SB_X;
    float* Gs = sm + SB_G;
    float* Bs = sm + SB_B;
    float* Cs = sm + SB_C;
    float* S1 = sm + SB_S1;
    float* S2 = sm + SB_S2;
    float* S3 = sm + SB_S3;
    float* Hs = sm + SB_H;
    float* up = sm + SB_UP;
    float* vp = sm + SB_VP;
    float* xp = sm + SB_XP;
    double* cs = (double*)(sm + SB_CS);
    float* dts = sm + SB_DT;
    float* el = sm + SB_E;
    float* rl = sm + SB_R;
    double* ul = (double*)(sm + SB_U);
    double* vl = (double*)(sm + SB_V);
    double* xd = (double*)(sm + SB_XD);
    double* red = (double*)(sm + SB_RED);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nwarps = MB_T / 32;
    const i64 bhc = blockIdx.x;
    const int c = (int)(bhc % nc);
    const i64 bh = bhc / nc;
    const int h = (int)(bh % H);
    const i64 b = bh / H;
    const int g = h / (H / G);
    const int oh = ho == H ? h : g;
    const int t0 = c * QQ, q = min(QQ, L - t0);
    const i64 row0 = b * L + t0;
    const float a = ld_elem(A, abf, h);
    const float dd = D ? ld_elem(D, dbf, h) : 0.f;
    const i64 xbase = row0 * H * PP + (i64)h * PP, bbase = row0 * G * NN + (i64)g * NN;
    const float* hsrc = hst + bhc * PP * NN;
    const float* dhsrc = dhst + bhc * PP * NN;

    // 1. The chunk's operands, its scalars and H.
    if (tid < 32) mb_chunk_cumsum(cs, dts, dt, dtbf, row0 * H + h, H, q, (double)a * LOG2E_D);
    double dsum = 0.0; // this thread's part of Σ ⟨gy, x⟩
    for (int e = tid; e < QQ * P4; e += MB_T) {
        int l = e / P4, p = e % P4;
        float xv = mb_tok(x, xbf, xbase, (i64)H * PP, l, p, q, PP), gv = mb_tok(dy, 0, xbase, (i64)H * PP, l, p, q, PP);
        Xs[l * LDP + p] = xv;
        Gs[l * LDP + p] = gv;
        dsum += (double)gv * (double)xv;
    }
    for (int e = tid; e < QQ * N4; e += MB_T) {
        int l = e / N4, n = e % N4;
        Bs[l * LDN + n] = mb_tok(B, bbf, bbase, (i64)G * NN, l, n, q, NN);
        Cs[l * LDN + n] = mb_tok(C, cbf, bbase, (i64)G * NN, l, n, q, NN);
    }
    for (int e = tid; e < P4 * N4; e += MB_T) {
        int p = e / N4, n = e % N4;
        Hs[p * LDN + n] = (p < PP && n < NN) ? hsrc[p * NN + n] : 0.f;
    }
    __syncthreads();

    // 2. C·Bᵀ into S1 and gy·xᵀ into S2 on the causal tiles (in double,
    //    rounded once); e and r.
    if (tid < QQ) {
        el[tid] = exp2f(fminf((float)cs[tid], 0.f));
        rl[tid] = exp2f(fminf((float)(cs[q - 1] - cs[tid]), 0.f));
    }
    for (int task = tid; task < 2 * TRI; task += MB_T) {
        const int tri = task >> 1;
        int tm = 0;
        while ((tm + 1) * (tm + 2) / 2 <= tri) tm++;
        const int l0 = tm * 4, s0 = (tri - tm * (tm + 1) / 2) * 4;
        double acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] = 0.0;
        float* out;
        if (task & 1) {
            mb_mm4_kk_d(acc, Gs, LDP, Xs, LDP, l0, s0, P4);
            out = S2;
        } else {
            mb_mm4_kk_d(acc, Cs, LDN, Bs, LDN, l0, s0, N4);
            out = S1;
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) out[(l0 + i) * LDQ + s0 + j] = (float)acc[i][j];
    }
    __syncthreads();

    // 3. With w = exp(cs_l − cs_s) on s ≤ l (0 above the diagonal):
    //    S1 = w∘(C·Bᵀ), S2 = w∘(gy·xᵀ)∘dt_s, S3 = S1∘(gy·xᵀ)∘dt_s below it.
    for (int e = tid; e < QQ * QQ; e += MB_T) {
        int l = e / QQ, s = e % QQ;
        float v1 = 0.f, v2 = 0.f, v3 = 0.f;
        if (s <= l) {
            float w = exp2f(fminf((float)(cs[l] - cs[s]), 0.f));
            float cb = S1[l * LDQ + s], gx = S2[l * LDQ + s] * dts[s] * w;
            v1 = w * cb;
            v2 = gx;
            v3 = s < l ? gx * cb : 0.f;
        }
        S1[l * LDQ + s] = v1;
        S2[l * LDQ + s] = v2;
        S3[l * LDQ + s] = v3;
    }
    __syncthreads();

    // 4. dC = e∘(gy·H) + S2·B, and e_l·gy_l·(H·C_l) per 4 columns; the
    //    column suffix sums of S3 (threads < Q, before their tiles).
    if (tid < QQ) {
        double run = 0.0;
        for (int l = QQ - 1; l > tid; l--) {
            run += (double)S3[l * LDQ + tid];
            S3[l * LDQ + tid] = (float)run;
        }
    }
    for (int tile = tid; tile < TQ * TNC; tile += MB_T) {
        const int tm = tile / TNC, tn = tile % TNC, l0 = tm * 4, n0 = tn * 4;
        float acc[4][4];
        mb_zero(acc);
        mb_mm4<true, false>(acc, Gs, LDP, Hs, LDN, l0, n0, 0, P4);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float e = el[l0 + i];
            float u = 0.f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                acc[i][j] *= e;
                u = fmaf(acc[i][j], Cs[(l0 + i) * LDN + n0 + j], u);
            }
            up[(l0 + i) * TNC + tn] = u;
        }
        mb_mm4<true, false>(acc, S2, LDQ, Bs, LDN, l0, n0, 0, l0 + 4);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (l0 + i >= q) break;
            float* o = dCo + ((row0 + l0 + i) * ho + oh) * NN;
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (n0 + j < NN) o[n0 + j] = acc[i][j];
        }
    }
    __syncthreads();

    // 5. ⟨dH, H⟩ (this thread's part) while dH replaces H.
    double hd = 0.0;
    for (int e = tid; e < P4 * N4; e += MB_T) {
        int p = e / N4, n = e % N4;
        float v = (p < PP && n < NN) ? dhsrc[p * NN + n] : 0.f;
        hd += (double)v * (double)Hs[p * LDN + n];
        Hs[p * LDN + n] = v;
    }
    hd = warp_sum_d(hd);
    if (lane == 0) red[warp] = hd;
    __syncthreads();

    // 6. dx̄ = r∘(B·dHᵀ) + S1ᵀ·gy, with r_s·x̄_s·(dH·B_s) and ⟨dx̄_s, x_s⟩
    //    per 4 columns; dx = dt∘dx̄ + D·gy.
    for (int tile = tid; tile < TQ * TPC; tile += MB_T) {
        const int tm = tile / TPC, tp = tile % TPC, s0 = tm * 4, p0 = tp * 4;
        float acc[4][4];
        mb_zero(acc);
        mb_mm4<true, true>(acc, Bs, LDN, Hs, LDN, s0, p0, 0, N4);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float r = rl[s0 + i];
            float v = 0.f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                acc[i][j] *= r;
                v = fmaf(acc[i][j], Xs[(s0 + i) * LDP + p0 + j], v);
            }
            vp[(s0 + i) * TPC + tp] = v * dts[s0 + i];
        }
        mb_mm4<false, false>(acc, S1, LDQ, Gs, LDP, s0, p0, s0, QQ);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int s = s0 + i;
            float v = 0.f;
#pragma unroll
            for (int j = 0; j < 4; j++) v = fmaf(acc[i][j], Xs[s * LDP + p0 + j], v);
            xp[s * TPC + tp] = v;
            if (s >= q) continue;
            float* o = dx + (row0 + s) * H * PP + (i64)h * PP;
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (p0 + j < PP) o[p0 + j] = fmaf(dts[s], acc[i][j], dd * Gs[s * LDP + p0 + j]);
        }
    }
    // 7. dB = (r·dt)∘(x·dH) + S2ᵀ·C.
    for (int tile = tid; tile < TQ * TNC; tile += MB_T) {
        const int tm = tile / TNC, tn = tile % TNC, s0 = tm * 4, n0 = tn * 4;
        float acc[4][4];
        mb_zero(acc);
        mb_mm4<true, false>(acc, Xs, LDP, Hs, LDN, s0, n0, 0, P4);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float r = rl[s0 + i] * dts[s0 + i];
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] *= r;
        }
        mb_mm4<false, false>(acc, S2, LDQ, Cs, LDN, s0, n0, s0, QQ);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (s0 + i >= q) break;
            float* o = dBo + ((row0 + s0 + i) * ho + oh) * NN;
#pragma unroll
            for (int j = 0; j < 4; j++)
                if (n0 + j < NN) o[n0 + j] = acc[i][j];
        }
    }
    __syncthreads();

    // 8. Per token: the row sums of the partial products.
    if (tid < QQ) {
        double u = 0.0, v = 0.0, w = 0.0;
        for (int k = 0; k < TNC; k++) u += (double)up[tid * TNC + k];
        for (int k = 0; k < TPC; k++) {
            v += (double)vp[tid * TPC + k];
            w += (double)xp[tid * TPC + k];
        }
        ul[tid] = u;
        vl[tid] = v;
        xd[tid] = w;
    }
    __syncthreads();

    // 9. da_t, ddt_t, and the chunk's parts of dA and dD.
    double hdot = 0.0;
    for (int w = 0; w < nwarps; w++) hdot += red[w];
    double pa = 0.0;
    if (tid < q) {
        const int t = tid;
        double rect = 0.0, suf = 0.0, pre = 0.0;
        for (int s = 0; s < t; s++) {
            rect += (double)S3[t * LDQ + s];
            pre += vl[s];
        }
        for (int l = t; l < q; l++) suf += ul[l];
        const double da = rect + suf + pre + (double)el[q - 1] * hdot;
        ddt[(row0 + t) * H + h] = (float)((double)a * da + xd[t]);
        pa = (double)dts[t] * da;
    }
    pa = warp_sum_d(pa);
    dsum = warp_sum_d(dsum);
    if (lane == 0) {
        red[32 + warp] = pa;
        red[64 + warp] = dsum;
    }
    __syncthreads();
    if (tid == 0) {
        double sa = 0.0, sd = 0.0;
        for (int w = 0; w < nwarps; w++) {
            sa += red[32 + w];
            sd += red[64 + w];
        }
        partA[bhc] = sa;
        partD[bhc] = sd;
    }
}

// k_mamba_scan_layout writes the two kernels' shared-memory sizes in
// floats (the tests compare them with train_mamba.go's formulas).
extern "C" __global__ void k_mamba_scan_layout(int* out) {
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        out[0] = SB_END;
        out[1] = CS_END;
    }
}
