// ssd_tc_v1.cu: the previous version of ssd_tc.cu (0.543 ms at the Phi-2
// layer size on the H200), kept so that BenchmarkSSDChunkScanVariants
// measures both in one run. Chunked scan on the tensor cores for bf16 x, B
// and C (dt, A, D of either dtype; float32 state and output). Compiled per
// shape with -DSSD_Q (chunk), -DSSD_PB (headdim columns per block),
// -DSSD_N (d_state). One block walks the chunks of one (batch, head) for
// SSD_PB headdim columns with SSD_PB/8 warps.
//
// Per chunk (SSD_Q tokens):
//   1. x, B (double-buffered) and C arrive in shared memory by cp.async,
//      one chunk ahead; warp 0 computes cs, exp(cs) and the state weights.
//   2. G = C·Bᵀ on the causal 16×8 tiles, turned into
//      W[l][s] = G·exp(cs_l − cs_s)·dt_s (s ≤ l), stored as bf16 hi + lo.
//   3. Warp w owns headdim columns 8w..8w+7 of y for all rows:
//      y = exp(cs_l)·(C·Hᵀ) + W·x + D·x, with H (the state entering the
//      chunk) read as bf16 hi + lo from shared memory.
//   4. The state, in float32 registers (warp w: rows 16⌊w/2⌋.., half of
//      the d_state columns), becomes exp(cs_last)·H + (wd ∘ x)ᵀ·B, the
//      weighted xᵀ fragments split into bf16 hi + lo in registers.
// bf16 products are exact and accumulate in float32; every float32 operand
// (W, H, wd ∘ x) is carried as hi + lo, so each product is good to about
// 2^-17 relative.

#define QT SSD_Q
#define PB SSD_PB
#define NS SSD_N
#define NW (PB / 8)
#define NT (NW * 32)
#define LB (QT / 16)       // 16-row blocks of a chunk
#define TG (LB * (LB + 1)) // causal 16×8 tiles of G
#define NJ (NS / 16)       // n8 tiles of a warp's half of the state
// Row strides (bf16 elements) of the shared tiles: an odd number of 16-byte
// units, so the 8 rows of an ldmatrix land in distinct banks.
#define PAD16(w) ((((w) + 7) / 8) % 2 == 0 ? (((w) + 7) / 8) * 8 + 8 : (((w) + 7) / 8) * 8)
#define SX PAD16(PB)
#define SN PAD16(NS)
#define SQ PAD16(QT)
// Byte offsets of the shared buffers.
#define OFF_X 0                          // [2][QT][SX] x, two stages
#define OFF_B (OFF_X + 2 * QT * SX * 2)  // [2][QT][SN] B, two stages
#define OFF_C (OFF_B + 2 * QT * SN * 2)  // [QT][SN] C
#define OFF_WH (OFF_C + QT * SN * 2)     // [QT][SQ] W hi
#define OFF_WL (OFF_WH + QT * SQ * 2)    // [QT][SQ] W lo
#define OFF_HH (OFF_WL + QT * SQ * 2)    // [PB][SN] H hi
#define OFF_HL (OFF_HH + PB * SN * 2)    // [PB][SN] H lo
#define OFF_F (OFF_HL + PB * SN * 2)     // float [2][4][QT]: cs, ecs, wd, dts of two chunks

// Blocks per multiprocessor the register budget is sized for (two fit in
// shared memory up to chunks of 64 at headdim and d_state 80).
#ifndef SSD_MINB
#define SSD_MINB (QT > 64 ? 1 : 2)
#endif

#if PB % 16 != 0 || NS % 16 != 0 || QT % 32 != 0 || QT > 32 * SSD_SEG
#error "ssd_tc needs SSD_PB and SSD_N multiples of 16, SSD_Q a multiple of 32 up to 128"
#endif

extern "C" __global__ void __launch_bounds__(NT, SSD_MINB) k_ssd_tc_v1(float* y, const bf16_t* x, const void* dt, int dtbf, const void* A, int abf,
                                                             const bf16_t* B, const bf16_t* C, const void* D, int dbf, float* state,
                                                             int L, int H, int P, int Hx, int Hb, int Hc) {
    float* const scal = (float*)(dyn_smem + OFF_F);
    const bf16_t* Xs0 = (const bf16_t*)(dyn_smem + OFF_X);
    const unsigned sb = smem_u32(dyn_smem);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
    const int b = blockIdx.x / H, h = blockIdx.x % H, p0 = blockIdx.y * PB;
    const int hx = h / (H / Hx), hb = h / (H / Hb), hc = h / (H / Hc);
    const float a2 = (A ? ld_elem(A, abf, h) : 0.f) * LOG2E;
    const float dd = D ? ld_elem(D, dbf, h) : 0.f;
    const i64 row0 = (i64)b * L;
    const int nchunks = (L + QT - 1) / QT;

    // Per-lane byte offsets of ldmatrix rows within a tile (stride S):
    // A from [m][k]; A from [k][m]; B from [n][k]; B from [k][n].
    const int r8 = lane & 7, j1 = (lane >> 3) & 1, j2 = lane >> 4;
    const unsigned oA_C = ((r8 + 8 * j1) * SN + 8 * j2) * 2, oA_W = ((r8 + 8 * j1) * SQ + 8 * j2) * 2;
    const unsigned oAt_X = ((r8 + 8 * j2) * SX + 8 * j1) * 2;
    const unsigned oB_N = (r8 * SN + 8 * j1) * 2;
    const unsigned oBt_X = ((r8 + 8 * j1 + 16 * j2) * SX) * 2;         // x4: two k16 steps
    const unsigned oBt_B = ((r8 + 8 * j1) * SN + 8 * j2) * 2;          // x4: two n8 tiles
    const unsigned oH = (r8 * SN + 8 * j1) * 2 + (j2 ? OFF_HL - OFF_HH : 0); // x4: hi then lo

    // cp.async of one chunk's rows in 16-byte pieces (zeros past the end):
    // x (PB/8 pieces a row), B and C (NS/8). Thread-invariant parts of the
    // addresses are computed once.
    const int XP = PB / 8, BP = NS / 8;
    const bf16_t* xsrc = x + (row0 * Hx + hx) * (i64)P + p0;
    const bf16_t* bsrc = B + (row0 * Hb + hb) * (i64)NS;
    const bf16_t* csrc = C + (row0 * Hc + hc) * (i64)NS;
    const i64 xstep = (i64)Hx * P, bstep = (i64)Hb * NS, cstep = (i64)Hc * NS, ystep = (i64)H * P;
    auto load_rows = [&](unsigned dst, const bf16_t* src, i64 step, int pieces, int stride, int c) {
        for (int e = tid; e < QT * pieces; e += NT) {
            const int l = e / pieces, k = e - l * pieces, t = c * QT + l;
            cp_async16(dst + (l * stride + 8 * k) * 2, t < L ? src + t * step + 8 * k : src, t < L ? 16 : 0);
        }
    };
    auto load_xb = [&](int c, int stage) {
        load_rows(sb + OFF_X + stage * QT * SX * 2, xsrc, xstep, XP, SX, c);
        load_rows(sb + OFF_B + stage * QT * SN * 2, bsrc, bstep, BP, SN, c);
    };
    auto load_c = [&](int c) { load_rows(sb + OFF_C, csrc, cstep, BP, SN, c); };

    // State accumulators: rows pr+g (+8), columns nb + 8j + 2tig (+1).
    const int pr = 16 * (warp >> 1), nb = (warp & 1) * (NS / 2);
    float hacc[NJ][4];
#pragma unroll
    for (int j = 0; j < NJ; j++) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            int p = pr + g + 8 * (q >> 1), n = nb + 8 * j + 2 * tig + (q & 1);
            hacc[j][q] = state ? state[(((i64)b * H + h) * P + p0 + p) * NS + n] : 0.f;
        }
    }
    auto store_h = [&]() {
#pragma unroll
        for (int j = 0; j < NJ; j++) {
#pragma unroll
            for (int q = 0; q < 4; q += 2) {
                int p = pr + g + 8 * (q >> 1), n = nb + 8 * j + 2 * tig;
                unsigned hi, lo;
                split_bf16x2(hacc[j][q], hacc[j][q + 1], hi, lo);
                *(unsigned*)(dyn_smem + OFF_HH + (p * SN + n) * 2) = hi;
                *(unsigned*)(dyn_smem + OFF_HL + (p * SN + n) * 2) = lo;
            }
        }
    };
    store_h();

    // Prologue: chunk 0's inputs and scalars.
    float dvn[SSD_SEG];
    load_xb(0, 0);
    load_c(0);
    cp_async_commit();
    if (warp == 0) {
        float dv[SSD_SEG];
        chunk_load_dt(dv, dt, dtbf, row0 * H + h, H, 0, QT, L);
        if (nchunks > 1) chunk_load_dt(dvn, dt, dtbf, row0 * H + h, H, QT, QT, L);
        chunk_scan_warp(dv, a2, QT, scal, scal + QT, scal + 2 * QT, scal + 3 * QT);
    }

    // Two barriers a chunk. Hazards: x/B stage (c+1)&1 and the C buffer
    // are refilled only after the barrier that follows their last reads
    // (the previous chunk's, resp. this chunk's Y_off and G); H is rewritten
    // after this chunk's second barrier, which follows the last Y_off read;
    // W is rewritten in the next chunk after its first barrier; the scalars
    // of chunk c+1 go to the other half of a double buffer.
    for (int c = 0; c < nchunks; c++) {
        const int st = c & 1;
        const float* cs = scal + st * 4 * QT;
        const float* ecs = cs + QT;
        const float* wd = cs + 2 * QT;
        const float* dts = cs + 3 * QT;
        cp_async_wait0(); // this chunk's x, B and C have landed
        __syncthreads();  // (A) inputs, scalars and the entering state are visible
        if (c + 1 < nchunks) load_xb(c + 1, st ^ 1);
        cp_async_commit();

        const unsigned sX = sb + OFF_X + st * QT * SX * 2, sB = sb + OFF_B + st * QT * SN * 2;
        const bf16_t* Xc = Xs0 + st * QT * SX;

        // 3a. Y_off = exp(cs_l)·C·Hᵀ for columns 8·warp.. of every row.
        float yacc[LB][4];
#pragma unroll
        for (int i = 0; i < LB; i++) yacc[i][0] = yacc[i][1] = yacc[i][2] = yacc[i][3] = 0.f;
#pragma unroll
        for (int k = 0; k < NS / 16; k++) {
            unsigned hf[4]; // H hi (b0, b1), H lo (b0, b1)
            ldsm_x4(hf, sb + OFF_HH + ((8 * warp) * SN + 16 * k) * 2 + oH);
            unsigned af[LB][4];
#pragma unroll
            for (int i = 0; i < LB; i++) ldsm_x4(af[i], sb + OFF_C + ((16 * i) * SN + 16 * k) * 2 + oA_C);
            // hi terms of every row block, then lo terms: consecutive mma
            // instructions never wait on each other's accumulator.
#pragma unroll
            for (int i = 0; i < LB; i++) mma_bf16_16816(yacc[i], af[i], hf);
#pragma unroll
            for (int i = 0; i < LB; i++) mma_bf16_16816(yacc[i], af[i], hf + 2);
        }
#pragma unroll
        for (int i = 0; i < LB; i++) {
            float e0 = ecs[16 * i + g], e1 = ecs[16 * i + g + 8];
            yacc[i][0] *= e0;
            yacc[i][1] *= e0;
            yacc[i][2] *= e1;
            yacc[i][3] *= e1;
        }
        // W[l][s] of one G tile (rows 16i.., columns 8j..), as hi + lo.
        auto emit_w = [&](const float* acc, int i, int j) {
#pragma unroll
            for (int q = 0; q < 4; q += 2) {
                int l = 16 * i + g + 8 * (q >> 1), s = 8 * j + 2 * tig;
                float w0 = acc[q] * exp2f(fminf(cs[l] - cs[s], 0.f)) * dts[s];
                float w1 = acc[q + 1] * exp2f(fminf(cs[l] - cs[s + 1], 0.f)) * dts[s + 1];
                if (j >= 2 * i) { // a tile on the diagonal: zero above it
                    w0 = s <= l ? w0 : 0.f;
                    w1 = s + 1 <= l ? w1 : 0.f;
                }
                unsigned hi, lo;
                split_bf16x2(w0, w1, hi, lo);
                *(unsigned*)(dyn_smem + OFF_WH + (l * SQ + s) * 2) = hi;
                *(unsigned*)(dyn_smem + OFF_WL + (l * SQ + s) * 2) = lo;
            }
        };
        // 2. W on the causal tiles, two tiles per warp at a time.
        for (int t0 = warp; t0 < TG; t0 += 2 * NW) {
            const int t1 = t0 + NW;
            int i0 = 0, i1 = 0;
            while ((i0 + 1) * (i0 + 2) <= t0) i0++;
            while ((i1 + 1) * (i1 + 2) <= t1) i1++;
            const int j0 = t0 - i0 * (i0 + 1), j1t = t1 - i1 * (i1 + 1);
            const bool two = t1 < TG;
            float acc0[4] = {0.f, 0.f, 0.f, 0.f}, acc1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int k = 0; k < NS / 16; k++) {
                unsigned af[4], bfr[2];
                ldsm_x4(af, sb + OFF_C + ((16 * i0) * SN + 16 * k) * 2 + oA_C);
                ldsm_x2(bfr, sB + ((8 * j0) * SN + 16 * k) * 2 + oB_N);
                mma_bf16_16816(acc0, af, bfr);
                if (two) {
                    ldsm_x4(af, sb + OFF_C + ((16 * i1) * SN + 16 * k) * 2 + oA_C);
                    ldsm_x2(bfr, sB + ((8 * j1t) * SN + 16 * k) * 2 + oB_N);
                    mma_bf16_16816(acc1, af, bfr);
                }
            }
            emit_w(acc0, i0, j0);
            if (two) emit_w(acc1, i1, j1t);
        }
        __syncthreads(); // (B) W is complete; Y_off and G have read C and H
        if (c + 1 < nchunks) load_c(c + 1);
        cp_async_commit();
        if (warp == 0 && c + 1 < nchunks) {
            // Scalars of the next chunk, into the other half of the buffer.
            float dv[SSD_SEG];
#pragma unroll
            for (int k = 0; k < SSD_SEG; k++) dv[k] = dvn[k];
            if (c + 2 < nchunks) chunk_load_dt(dvn, dt, dtbf, row0 * H + h, H, (c + 2) * QT, QT, L);
            float* nx = scal + (st ^ 1) * 4 * QT;
            chunk_scan_warp(dv, a2, QT, nx, nx + QT, nx + 2 * QT, nx + 3 * QT);
        }

        // 3b. Y_diag = W·x, then D·x, and the store.
        float* const ychunk = y + ((row0 + (i64)c * QT) * H + h) * (i64)P + p0;
#pragma unroll
        for (int k = 0; k < LB; k += 2) {
            unsigned xf[4]; // x fragments of the s-steps k and k+1
            ldsm_x4_trans(xf, sX + ((16 * k) * SX + 8 * warp) * 2 + oBt_X);
#pragma unroll
            for (int kk = 0; kk < 2; kk++) {
#pragma unroll
                for (int i = k + kk; i < LB; i++) {
                    unsigned wh[4];
                    ldsm_x4(wh, sb + OFF_WH + ((16 * i) * SQ + 16 * (k + kk)) * 2 + oA_W);
                    mma_bf16_16816(yacc[i], wh, xf + 2 * kk);
                }
#pragma unroll
                for (int i = k + kk; i < LB; i++) {
                    unsigned wl[4];
                    ldsm_x4(wl, sb + OFF_WL + ((16 * i) * SQ + 16 * (k + kk)) * 2 + oA_W);
                    mma_bf16_16816(yacc[i], wl, xf + 2 * kk);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < LB; i++) {
#pragma unroll
            for (int q = 0; q < 4; q += 2) {
                const int l = 16 * i + g + 8 * (q >> 1), p = 8 * warp + 2 * tig;
                if (c * QT + l < L) {
                    unsigned xv = *(const unsigned*)(Xc + l * SX + p);
                    float2 v = make_float2(yacc[i][q] + dd * bf16_lo(xv), yacc[i][q + 1] + dd * bf16_hi(xv));
                    *(float2*)(ychunk + l * ystep + p) = v;
                }
            }
        }

        // 4. The state update.
        const float decay = ecs[QT - 1];
#pragma unroll
        for (int j = 0; j < NJ; j++) {
#pragma unroll
            for (int q = 0; q < 4; q++) hacc[j][q] *= decay;
        }
#pragma unroll
        for (int k = 0; k < LB; k++) {
            unsigned af[4], ah[4], al[4];
            ldsm_x4_trans(af, sX + ((16 * k) * SX + pr) * 2 + oAt_X);
            // Fragment registers 0, 1 hold s = 16k + 2tig (+1); 2, 3 hold s + 8 (+9).
            const int s0 = 16 * k + 2 * tig;
            const float w00 = wd[s0], w01 = wd[s0 + 1], w10 = wd[s0 + 8], w11 = wd[s0 + 9];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const float wlo = r < 2 ? w00 : w10, whi = r < 2 ? w01 : w11;
                split_bf16x2(bf16_lo(af[r]) * wlo, bf16_hi(af[r]) * whi, ah[r], al[r]);
            }
            unsigned bfr[NJ][2];
#pragma unroll
            for (int j = 0; j < NJ; j += 2) {
                if (j + 1 < NJ) {
                    unsigned r4[4];
                    ldsm_x4_trans(r4, sB + ((16 * k) * SN + nb + 8 * j) * 2 + oBt_B);
                    bfr[j][0] = r4[0], bfr[j][1] = r4[1], bfr[j + 1][0] = r4[2], bfr[j + 1][1] = r4[3];
                } else {
                    ldsm_x2_trans(bfr[j], sB + ((16 * k) * SN + nb + 8 * j) * 2 + oBt_B);
                }
            }
#pragma unroll
            for (int j = 0; j < NJ; j++) mma_bf16_16816(hacc[j], ah, bfr[j]);
#pragma unroll
            for (int j = 0; j < NJ; j++) mma_bf16_16816(hacc[j], al, bfr[j]);
        }
        store_h(); // read after the next chunk's first barrier
    }
    cp_async_wait0();
    if (state) {
#pragma unroll
        for (int j = 0; j < NJ; j++) {
#pragma unroll
            for (int q = 0; q < 4; q++) {
                int p = pr + g + 8 * (q >> 1), n = nb + 8 * j + 2 * tig + (q & 1);
                state[(((i64)b * H + h) * P + p0 + p) * NS + n] = hacc[j][q];
            }
        }
    }
}
