// flash_attention.cu: softmax attention on the tensor cores, FlashAttention-2
// style, for bf16 q, k, v in the [b, l, heads, FA_P] layout (GQA: head h
// reads kv head h/(H/Hkv)); compiled per head size with -DFA_P (a multiple
// of 16 up to 128; 80 is 5 k16 steps) and, for the dK/dV pass, -DFA_BQ
// (query rows a step, 32 or 64).
//
// Products are mma.sync m16n8k16 with bf16 operands and float32
// accumulators; the softmax runs in float32 in base 2 (scores multiplied by
// scale·log2 e, exponentials by ex2); the probabilities P (and the score
// gradient dS) are rounded to bf16 as product operands, as flash-attention
// does. A block has 4 warps; in the forward and the dQ pass each warp owns
// 16 query rows of a 64-row block and walks the keys in tiles of 64 (K and
// V double-buffered by cp.async), skipping tiles past the diagonal when
// causal. The backward recomputes P from q, k and each row's log-sum-exp:
// the dK/dV pass (one block per 64 keys of one kv head, each warp 16 keys)
// walks the query heads of its kv head in order and their query tiles, so
// every gradient element is summed by one thread in a fixed order: no
// atomics, deterministic results.
//
// Grids: the forward and the dQ pass (batch·heads, query blocks of 64),
// the dK/dV pass (batch·kv heads, key blocks of 64); causal forward and dQ
// blocks run from the last query block to the first (the longest first).
//
// Shared tiles have rows of SP bf16: an odd number of 16-byte units, so
// the 8 rows of an ldmatrix land in distinct banks.

#ifndef FA_P
#error "flash_attention needs -DFA_P"
#endif
#if FA_P % 16 != 0 || FA_P > 128 || FA_P < 16
#error "flash_attention needs FA_P a multiple of 16 in [16, 128]"
#endif
#ifndef FA_BQ
#define FA_BQ 64
#endif
#if FA_BQ != 32 && FA_BQ != 64
#error "flash_attention needs FA_BQ 32 or 64"
#endif

#define FP FA_P
#define FK (FP / 16) // k16 steps over the head
#define FN (FP / 8)  // n8 tiles over the head
#define FA_BM 64     // query rows of a forward / dQ block, keys of a dK/dV block
#define FA_BN 64     // keys of a tile in the forward / dQ pass
#define FA_NT 128    // threads of a block (4 warps)
#define FA_PAD16(w) ((((w) + 7) / 8) % 2 == 0 ? (((w) + 7) / 8) * 8 + 8 : (((w) + 7) / 8) * 8)
#define SP FA_PAD16(FP)
#define ROWB (SP * 2)           // bytes of a shared row
#define TILE64 (64 * ROWB)      // bytes of a 64-row tile
#define TILEQ (FA_BQ * ROWB)    // bytes of an FA_BQ-row tile
#define FA_PIECES (FP / 8)      // 16-byte pieces of a row
#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

// Dynamic shared memory of each kernel (flashSharedBytes in
// flash_attention.go mirrors these).
#define FWD_SMEM (5 * TILE64)                         // Q, K[2], V[2]
#define DQ_SMEM (6 * TILE64)                          // Q, dO, K[2], V[2]
#define DKV_SMEM (2 * TILE64 + 4 * TILEQ + 16 * FA_BQ) // K, V, Q[2], dO[2], lse2[2], D[2]

// cp.async of rows r0 .. r0+rows-1 of a sequence of L rows (row r at
// base + r·step) into a shared tile at dst; rows past L are zero-filled.
__device__ __forceinline__ void fa_load_rows(unsigned dst, const bf16_t* base, i64 step, int r0, int rows, int L) {
    for (int i = threadIdx.x; i < rows * FA_PIECES; i += FA_NT) {
        const int r = i / FA_PIECES, c = i - r * FA_PIECES;
        const bool in = r0 + r < L;
        cp_async16(dst + r * ROWB + 16 * c, in ? base + (i64)(r0 + r) * step + 8 * c : base, in ? 16 : 0);
    }
}

// A tile pair of float32 accumulators (two n8 tiles: columns 0-7 and 8-15
// of a k16 step) as the bf16 A fragment of the next product.
__device__ __forceinline__ void fa_pack_a(unsigned* a, const float* c0, const float* c1) {
    a[0] = cvt_bf16x2(c0[0], c0[1]);
    a[1] = cvt_bf16x2(c0[2], c0[3]);
    a[2] = cvt_bf16x2(c1[0], c1[1]);
    a[3] = cvt_bf16x2(c1[2], c1[3]);
}

// Forward: out (F32 [b, L, H, FP]) and, when lse is not null, each row's
// log-sum-exp of the scaled scores (natural log, F32 [b, H, L]). lse_only:
// only the log-sum-exp (no V, no out). scale2 = scale·log2 e. rev: take
// the query blocks last to first (causal: the longest first).
extern "C" __global__ void __launch_bounds__(FA_NT) k_flash_fwd(float* out, float* lse, const bf16_t* q, const bf16_t* k, const bf16_t* v, int L,
                                                                int H, int Hkv, float scale2, int causal, int rev, int lse_only) {
    const float NEG_INF = __int_as_float(0xff800000);
    const unsigned sb = smem_u32(dyn_smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
    const int qb = rev ? (int)gridDim.y - 1 - (int)blockIdx.y : (int)blockIdx.y;
    const int q0 = qb * FA_BM;
    const int b = blockIdx.x / H, h = blockIdx.x % H, hk = h / (H / Hkv);
    const i64 qstep = (i64)H * FP, kstep = (i64)Hkv * FP;
    const bf16_t* qbase = q + ((i64)b * L * H + h) * FP;
    const bf16_t* kbase = k + ((i64)b * L * Hkv + hk) * FP;
    const bf16_t* vbase = v + ((i64)b * L * Hkv + hk) * FP;
    const unsigned sQ = sb, sK = sb + TILE64, sV = sb + 3 * TILE64;
    const int kend = causal ? min(L, q0 + FA_BM) : L;
    const int nkt = (kend + FA_BN - 1) / FA_BN;

    fa_load_rows(sQ, qbase, qstep, q0, FA_BM, L);
    fa_load_rows(sK, kbase, kstep, 0, FA_BN, L);
    if (!lse_only) fa_load_rows(sV, vbase, kstep, 0, FA_BN, L);
    cp_async_commit();

    // ldmatrix row addresses of this lane: A from [m][k] (the warp's 16
    // query rows); B from [n][k], two n8 tiles of a k16 step (K); B from
    // [k][n] transposed, two n8 tiles of a k16 step (V).
    const int r8 = lane & 7, j1 = (lane >> 3) & 1, j2 = lane >> 4;
    const unsigned oA = (16 * warp + r8 + 8 * j1) * ROWB + 16 * j2;
    const unsigned oBn = (r8 + 8 * j2) * ROWB + 16 * j1;
    const unsigned oBt = (r8 + 8 * j1) * ROWB + 16 * j2;

    unsigned qf[FK][4];
    float o[FN][4];
#pragma unroll
    for (int n = 0; n < FN; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
    const int row0 = q0 + 16 * warp + g; // this lane's rows: row0 and row0 + 8

    for (int kt = 0; kt < nkt; kt++) {
        const int st = kt & 1;
        if (kt + 1 < nkt) {
            fa_load_rows(sK + (st ^ 1) * TILE64, kbase, kstep, (kt + 1) * FA_BN, FA_BN, L);
            if (!lse_only) fa_load_rows(sV + (st ^ 1) * TILE64, vbase, kstep, (kt + 1) * FA_BN, FA_BN, L);
            cp_async_commit();
            cp_async_wait1();
        } else {
            cp_async_wait0();
        }
        __syncthreads();
        if (kt == 0) {
#pragma unroll
            for (int kk = 0; kk < FK; kk++) ldsm_x4(qf[kk], sQ + oA + 32 * kk);
        }
        float s[FA_BN / 8][4];
#pragma unroll
        for (int j = 0; j < FA_BN / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
        const unsigned kt_s = sK + st * TILE64;
#pragma unroll
        for (int kk = 0; kk < FK; kk++) {
#pragma unroll
            for (int j = 0; j < FA_BN / 16; j++) {
                unsigned bf[4];
                ldsm_x4(bf, kt_s + oBn + 16 * j * ROWB + 32 * kk);
                mma_bf16_16816(s[2 * j], qf[kk], bf);
                mma_bf16_16816(s[2 * j + 1], qf[kk], bf + 2);
            }
        }
        const int k0 = kt * FA_BN;
        const bool edge = k0 + FA_BN > L || (causal && k0 + FA_BN - 1 > q0 + 16 * warp);
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int j = 0; j < FA_BN / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[j][e] * scale2;
                if (edge) {
                    const int key = k0 + 8 * j + 2 * tig + (e & 1), row = row0 + 8 * (e >> 1);
                    if (key >= L || (causal && key > row)) x = NEG_INF;
                }
                s[j][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float mu[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            mu[r] = mx[r] == NEG_INF ? 0.f : mx[r]; // a row with no key yet: nothing to rescale
            const float corr = ex2_ftz(m[r] - mu[r]);
            m[r] = mx[r];
            l[r] *= corr;
#pragma unroll
            for (int n = 0; n < FN; n++) {
                o[n][2 * r] *= corr;
                o[n][2 * r + 1] *= corr;
            }
        }
#pragma unroll
        for (int j = 0; j < FA_BN / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = ex2_ftz(s[j][e] - mu[e >> 1]);
                l[e >> 1] += p;
                s[j][e] = p;
            }
        }
        if (!lse_only) {
            const unsigned vt_s = sV + st * TILE64;
#pragma unroll
            for (int jj = 0; jj < FA_BN / 16; jj++) {
                unsigned pa[4];
                fa_pack_a(pa, s[2 * jj], s[2 * jj + 1]);
#pragma unroll
                for (int n2 = 0; n2 < FN / 2; n2++) {
                    unsigned bf[4];
                    ldsm_x4_trans(bf, vt_s + oBt + 16 * jj * ROWB + 32 * n2);
                    mma_bf16_16816(o[2 * n2], pa, bf);
                    mma_bf16_16816(o[2 * n2 + 1], pa, bf + 2);
                }
            }
        }
        __syncthreads(); // this stage is refilled by the next iteration's copies
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const int row = row0 + 8 * r;
        if (row >= L) continue;
        if (lse && tig == 0) lse[((i64)b * H + h) * L + row] = (m[r] + log2f(l[r])) * LN2_F;
        if (lse_only) continue;
        const float inv = 1.f / l[r];
        float* dst = out + (((i64)b * L + row) * H + h) * FP + 2 * tig;
#pragma unroll
        for (int n = 0; n < FN; n++) st_global_f2(dst + 8 * n, o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    }
}

// Backward, first pass: one warp per (row, head): D = Σ_d dout·out (F32
// [b, H, L]) and dout rounded to bf16 (dob, the layout of dout), for
// rows = b·L rows of H heads; dout and out F32 (0) or bf16 (1).
extern "C" __global__ void __launch_bounds__(256) k_flash_bwd_prep(float* Dd, bf16_t* dob, const void* dout, int dbf, const void* out, int obf,
                                                                   int rows, int L, int H) {
    const int lane = threadIdx.x & 31;
    const i64 nw = (i64)rows * H;
    for (i64 w = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; w < nw; w += ((i64)gridDim.x * blockDim.x) >> 5) {
        const i64 base = w * FP;
        float acc = 0.f;
        for (int d = lane; d < FP; d += 32) {
            const float x = ld_elem(dout, dbf, base + d);
            acc += x * ld_elem(out, obf, base + d);
            dob[base + d] = f32_to_bf16(x);
        }
        acc = warp_sum(acc);
        if (lane == 0) {
            const i64 row = w / H; // b·L + t
            const int h = (int)(w - row * H);
            const i64 bi = row / L, t = row - bi * L;
            Dd[(bi * H + h) * L + t] = acc;
        }
    }
}

// Backward, dQ pass: one block per 64 query rows of one (batch, head),
// each warp 16 rows; walks the key tiles as the forward does:
// S = Q·Kᵀ, P = exp2(scale2·S − lse2), dP = dO·Vᵀ, dS = P∘(dP − D),
// dQ += dS·K; finally dQ·scale (F32 [b, L, H, FP]).
extern "C" __global__ void __launch_bounds__(FA_NT) k_flash_bwd_dq(float* dq, const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dob,
                                                                   const float* lse, const float* Dd, int L, int H, int Hkv, float scale,
                                                                   float scale2, int causal, int rev) {
    const unsigned sb = smem_u32(dyn_smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
    const int qb = rev ? (int)gridDim.y - 1 - (int)blockIdx.y : (int)blockIdx.y;
    const int q0 = qb * FA_BM;
    const int b = blockIdx.x / H, h = blockIdx.x % H, hk = h / (H / Hkv);
    const i64 qstep = (i64)H * FP, kstep = (i64)Hkv * FP;
    const i64 qoff = ((i64)b * L * H + h) * FP, koff = ((i64)b * L * Hkv + hk) * FP;
    const unsigned sQ = sb, sO = sb + TILE64, sK = sb + 2 * TILE64, sV = sb + 4 * TILE64;
    const int kend = causal ? min(L, q0 + FA_BM) : L;
    const int nkt = (kend + FA_BN - 1) / FA_BN;

    fa_load_rows(sQ, q + qoff, qstep, q0, FA_BM, L);
    fa_load_rows(sO, dob + qoff, qstep, q0, FA_BM, L);
    fa_load_rows(sK, k + koff, kstep, 0, FA_BN, L);
    fa_load_rows(sV, v + koff, kstep, 0, FA_BN, L);
    cp_async_commit();

    const int r8 = lane & 7, j1 = (lane >> 3) & 1, j2 = lane >> 4;
    const unsigned oA = (16 * warp + r8 + 8 * j1) * ROWB + 16 * j2;
    const unsigned oBn = (r8 + 8 * j2) * ROWB + 16 * j1;
    const unsigned oBt = (r8 + 8 * j1) * ROWB + 16 * j2;

    const int row0 = q0 + 16 * warp + g;
    float lse2[2], Dr[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row0 + 8 * r;
        const i64 i = ((i64)b * H + h) * L + row;
        lse2[r] = row < L ? lse[i] * LOG2E_F : 0.f;
        Dr[r] = row < L ? Dd[i] : 0.f;
    }
    float acc[FN][4];
#pragma unroll
    for (int n = 0; n < FN; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    for (int kt = 0; kt < nkt; kt++) {
        const int st = kt & 1;
        if (kt + 1 < nkt) {
            fa_load_rows(sK + (st ^ 1) * TILE64, k + koff, kstep, (kt + 1) * FA_BN, FA_BN, L);
            fa_load_rows(sV + (st ^ 1) * TILE64, v + koff, kstep, (kt + 1) * FA_BN, FA_BN, L);
            cp_async_commit();
            cp_async_wait1();
        } else {
            cp_async_wait0();
        }
        __syncthreads();
        const unsigned kt_s = sK + st * TILE64, vt_s = sV + st * TILE64;
        float s[FA_BN / 8][4], dp[FA_BN / 8][4];
#pragma unroll
        for (int j = 0; j < FA_BN / 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
            dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
        }
#pragma unroll
        for (int kk = 0; kk < FK; kk++) {
            unsigned qa[4], oa[4];
            ldsm_x4(qa, sQ + oA + 32 * kk);
            ldsm_x4(oa, sO + oA + 32 * kk);
#pragma unroll
            for (int j = 0; j < FA_BN / 16; j++) {
                unsigned bk[4], bv[4];
                ldsm_x4(bk, kt_s + oBn + 16 * j * ROWB + 32 * kk);
                ldsm_x4(bv, vt_s + oBn + 16 * j * ROWB + 32 * kk);
                mma_bf16_16816(s[2 * j], qa, bk);
                mma_bf16_16816(s[2 * j + 1], qa, bk + 2);
                mma_bf16_16816(dp[2 * j], oa, bv);
                mma_bf16_16816(dp[2 * j + 1], oa, bv + 2);
            }
        }
        const int k0 = kt * FA_BN;
        const bool edge = k0 + FA_BN > L || (causal && k0 + FA_BN - 1 > q0 + 16 * warp);
#pragma unroll
        for (int j = 0; j < FA_BN / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                float p = ex2_ftz(s[j][e] * scale2 - lse2[r]);
                if (edge) {
                    const int key = k0 + 8 * j + 2 * tig + (e & 1), row = row0 + 8 * r;
                    if (key >= L || (causal && key > row)) p = 0.f;
                }
                s[j][e] = p * (dp[j][e] - Dr[r]); // dS
            }
        }
#pragma unroll
        for (int jj = 0; jj < FA_BN / 16; jj++) {
            unsigned da[4];
            fa_pack_a(da, s[2 * jj], s[2 * jj + 1]);
#pragma unroll
            for (int n2 = 0; n2 < FN / 2; n2++) {
                unsigned bf[4];
                ldsm_x4_trans(bf, kt_s + oBt + 16 * jj * ROWB + 32 * n2);
                mma_bf16_16816(acc[2 * n2], da, bf);
                mma_bf16_16816(acc[2 * n2 + 1], da, bf + 2);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row0 + 8 * r;
        if (row >= L) continue;
        float* dst = dq + (((i64)b * L + row) * H + h) * FP + 2 * tig;
#pragma unroll
        for (int n = 0; n < FN; n++) st_global_f2(dst + 8 * n, acc[n][2 * r] * scale, acc[n][2 * r + 1] * scale);
    }
}

// Backward, dK/dV pass: one block per 64 keys of one (batch, kv head),
// each warp 16 keys. For each query head of the kv head in order and each
// query tile of FA_BQ rows that sees the keys (causal: from the block's
// first key on): Sᵀ = K·Qᵀ, Pᵀ = exp2(scale2·Sᵀ − lse2), dPᵀ = V·dOᵀ,
// dSᵀ = Pᵀ∘(dPᵀ − D); dV += Pᵀ·dO, dK += dSᵀ·Q; finally dK·scale (F32
// [b, L, Hkv, FP], like dV).
extern "C" __global__ void __launch_bounds__(FA_NT) k_flash_bwd_dkdv(float* dk, float* dv, const bf16_t* q, const bf16_t* k, const bf16_t* v,
                                                                     const bf16_t* dob, const float* lse, const float* Dd, int L, int H,
                                                                     int Hkv, float scale, float scale2, int causal) {
    const unsigned sb = smem_u32(dyn_smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
    const int k0 = blockIdx.y * FA_BM;
    const int b = blockIdx.x / Hkv, hk = blockIdx.x % Hkv, rep = H / Hkv;
    const i64 qstep = (i64)H * FP, kstep = (i64)Hkv * FP;
    const i64 koff = ((i64)b * L * Hkv + hk) * FP;
    const unsigned sK = sb, sV = sb + TILE64, sQ = sb + 2 * TILE64, sO = sQ + 2 * TILEQ;
    float* const sLD = (float*)(dyn_smem + 2 * TILE64 + 4 * TILEQ); // [2][2][FA_BQ]: lse2, D of two stages

    const int qt0 = causal ? k0 / FA_BQ : 0;
    const int nqt = (L + FA_BQ - 1) / FA_BQ - qt0; // query tiles a head
    const int steps = rep * nqt;

    // The inputs of step i (query head hk·rep + i / nqt, tile qt0 + i % nqt)
    // into stage st: Q and dO by cp.async, lse2 and D by plain stores.
    auto load_step = [&](int i, int st) {
        const int h = hk * rep + i / nqt, t0 = (qt0 + i % nqt) * FA_BQ;
        const i64 qoff = ((i64)b * L * H + h) * FP;
        fa_load_rows(sQ + st * TILEQ, q + qoff, qstep, t0, FA_BQ, L);
        fa_load_rows(sO + st * TILEQ, dob + qoff, qstep, t0, FA_BQ, L);
        for (int r = tid; r < FA_BQ; r += FA_NT) {
            const i64 idx = ((i64)b * H + h) * L + t0 + r;
            const bool in = t0 + r < L;
            sLD[(2 * st) * FA_BQ + r] = in ? lse[idx] * LOG2E_F : 0.f;
            sLD[(2 * st + 1) * FA_BQ + r] = in ? Dd[idx] : 0.f;
        }
    };
    fa_load_rows(sK, k + koff, kstep, k0, FA_BM, L);
    fa_load_rows(sV, v + koff, kstep, k0, FA_BM, L);
    load_step(0, 0);
    cp_async_commit();

    const int r8 = lane & 7, j1 = (lane >> 3) & 1, j2 = lane >> 4;
    const unsigned oA = (16 * warp + r8 + 8 * j1) * ROWB + 16 * j2;
    const unsigned oBn = (r8 + 8 * j2) * ROWB + 16 * j1;
    const unsigned oBt = (r8 + 8 * j1) * ROWB + 16 * j2;
    const int key0 = k0 + 16 * warp + g; // this lane's keys: key0 and key0 + 8

    float dka[FN][4], dva[FN][4];
#pragma unroll
    for (int n = 0; n < FN; n++) {
        dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = 0.f;
        dva[n][0] = dva[n][1] = dva[n][2] = dva[n][3] = 0.f;
    }
    for (int i = 0; i < steps; i++) {
        const int st = i & 1;
        if (i + 1 < steps) {
            load_step(i + 1, st ^ 1);
            cp_async_commit();
            cp_async_wait1();
        } else {
            cp_async_wait0();
        }
        __syncthreads();
        const unsigned qs = sQ + st * TILEQ, os = sO + st * TILEQ;
        const float* l2 = sLD + (2 * st) * FA_BQ;
        const float* Ds = sLD + (2 * st + 1) * FA_BQ;
        const int t0 = (qt0 + i % nqt) * FA_BQ;
        float s[FA_BQ / 8][4], dp[FA_BQ / 8][4];
#pragma unroll
        for (int j = 0; j < FA_BQ / 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
            dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
        }
#pragma unroll
        for (int kk = 0; kk < FK; kk++) {
            unsigned ka[4], va[4];
            ldsm_x4(ka, sK + oA + 32 * kk);
            ldsm_x4(va, sV + oA + 32 * kk);
#pragma unroll
            for (int j = 0; j < FA_BQ / 16; j++) {
                unsigned bq[4], bo[4];
                ldsm_x4(bq, qs + oBn + 16 * j * ROWB + 32 * kk);
                ldsm_x4(bo, os + oBn + 16 * j * ROWB + 32 * kk);
                mma_bf16_16816(s[2 * j], ka, bq);
                mma_bf16_16816(s[2 * j + 1], ka, bq + 2);
                mma_bf16_16816(dp[2 * j], va, bo);
                mma_bf16_16816(dp[2 * j + 1], va, bo + 2);
            }
        }
        // Rows are keys, columns queries. Masked: queries past L, and
        // (causal) queries before the key.
        const bool edge = t0 + FA_BQ > L || (causal && t0 < k0 + 16 * warp + 15);
#pragma unroll
        for (int j = 0; j < FA_BQ / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int c = 8 * j + 2 * tig + (e & 1);
                float p = ex2_ftz(s[j][e] * scale2 - l2[c]);
                if (edge) {
                    const int query = t0 + c, key = key0 + 8 * (e >> 1);
                    if (query >= L || (causal && key > query)) p = 0.f;
                }
                s[j][e] = p;
                dp[j][e] = p * (dp[j][e] - Ds[c]); // dSᵀ
            }
        }
#pragma unroll
        for (int jj = 0; jj < FA_BQ / 16; jj++) {
            unsigned pa[4], da[4];
            fa_pack_a(pa, s[2 * jj], s[2 * jj + 1]);
            fa_pack_a(da, dp[2 * jj], dp[2 * jj + 1]);
#pragma unroll
            for (int n2 = 0; n2 < FN / 2; n2++) {
                unsigned bo[4], bq[4];
                ldsm_x4_trans(bo, os + oBt + 16 * jj * ROWB + 32 * n2);
                ldsm_x4_trans(bq, qs + oBt + 16 * jj * ROWB + 32 * n2);
                mma_bf16_16816(dva[2 * n2], pa, bo);
                mma_bf16_16816(dva[2 * n2 + 1], pa, bo + 2);
                mma_bf16_16816(dka[2 * n2], da, bq);
                mma_bf16_16816(dka[2 * n2 + 1], da, bq + 2);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int key = key0 + 8 * r;
        if (key >= L) continue;
        const i64 base = (((i64)b * L + key) * Hkv + hk) * FP + 2 * tig;
#pragma unroll
        for (int n = 0; n < FN; n++) {
            st_global_f2(dk + base + 8 * n, dka[n][2 * r] * scale, dka[n][2 * r + 1] * scale);
            st_global_f2(dv + base + 8 * n, dva[n][2 * r], dva[n][2 * r + 1]);
        }
    }
}
