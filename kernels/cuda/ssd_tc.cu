// ssd_tc.cu: chunked scan on the tensor cores for bf16 x, B and C (dt, A,
// D of either dtype; float32 state and output). Compiled per shape with
// -DSSD_Q (chunk), -DSSD_PB (headdim columns per block), -DSSD_N
// (d_state) and -DSSD_CW (headdim columns per warp, 8 or 16). One block
// walks the chunks of one (batch, head) for SSD_PB headdim columns with
// SSD_PB/SSD_CW warps; warp w owns headdim columns CW·w.., of y and of the
// state alike, so the state never leaves its registers.
//
// Per chunk (SSD_Q tokens), between two barriers:
//   1. x, B (double-buffered) and C arrive in shared memory by cp.async,
//      one chunk ahead; warp 0 computes the scalars of the next chunk (cs,
//      exp(cs), the state weights, dt) into the other half of a buffer.
//   2. Y_off = exp(cs_l)·C·Hᵀ. The state is kept transposed, Hᵀ[n][p], as
//      the accumulators of m16n8 tiles (rows n, 8 of the warp's columns
//      p); split into bf16 hi + lo and transposed in registers
//      (movmatrix), each tile is a B fragment of C·Hᵀ.
//   3. G = C·Bᵀ on the causal 16×16 blocks, turned into
//      W[l][s] = G·exp(cs_l − cs_s)·dt_s (s ≤ l), stored as bf16 hi + lo.
//      Barrier.
//   4. y = Y_off + W·x + D·x, stored.
//   5. Hᵀ ← exp(cs_last)·Hᵀ + Bᵀ·(wd ∘ x), the weighted x fragments (the
//      ones step 4 used) split into bf16 hi + lo in registers.
// bf16 products are exact and accumulate in float32; every float32 operand
// (W, H, wd ∘ x) is carried as hi + lo, so each product is good to about
// 2^-17 relative.
//
// Every warp reads all of C, W and Bᵀ from shared memory (ldmatrix), so
// that traffic grows with the warps of a block: with 16 columns a warp
// each fragment serves two n8 tiles, at half the warps (tcCols in
// ssd_ops.go chooses; NOTES.md has the measurements).

#define QT SSD_Q
#define PB SSD_PB
#define NS SSD_N
#ifndef SSD_CW
#define SSD_CW 8
#endif
#define CW SSD_CW
#define NJ (CW / 8)        // n8 tiles of a warp's columns
#define NW (PB / CW)
#define NT (NW * 32)
#define LB (QT / 16)       // 16-row blocks of a chunk
#define GB (LB * (LB + 1) / 2) // causal 16×16 blocks of G
#define NK (NS / 16)       // k16 steps over d_state; m16 tiles of the state
#define NGB ((GB + NW - 1) / NW) // G blocks a warp
// Row strides (bf16 elements) of the shared tiles: an odd number of 16-byte
// units, so the 8 rows of an ldmatrix land in distinct banks.
#define PAD16(w) ((((w) + 7) / 8) % 2 == 0 ? (((w) + 7) / 8) * 8 + 8 : (((w) + 7) / 8) * 8)
#define SX PAD16(PB)
#define SN PAD16(NS)
#define SQ PAD16(QT)
// Byte offsets of the shared buffers (tcSharedBytes in ssd_ops.go).
#define OFF_X 0                          // [2][QT][SX] x, two stages
#define OFF_B (OFF_X + 2 * QT * SX * 2)  // [2][QT][SN] B, two stages
#define OFF_C (OFF_B + 2 * QT * SN * 2)  // [QT][SN] C
#define OFF_WH (OFF_C + QT * SN * 2)     // [QT][SQ] W hi
#define OFF_WL (OFF_WH + QT * SQ * 2)    // [QT][SQ] W lo
#define OFF_F (OFF_WL + QT * SQ * 2)     // float [2][4][QT]: cs, ecs, wd, dts of two chunks
// 16-byte pieces of one row of x, of B and of C.
#define XP (PB / 8)
#define BP (NS / 8)

// SSD_SKIP (benchmarks only, wrong results): a bit mask of stages left out
// to time the others: 1 Y_off, 2 G and W, 4 W·x, 8 the state update, 16
// the copies of the next chunk's inputs.
#ifndef SSD_SKIP
#define SSD_SKIP 0
#endif

// Blocks per multiprocessor the register budget is sized for.
#ifndef SSD_MINB
#define SSD_MINB (QT > 64 ? 1 : 2)
#endif

#if PB % 16 != 0 || NS % 16 != 0 || QT % 32 != 0 || QT > 128 || (CW != 8 && CW != 16) || PB % CW != 0
#error "ssd_tc needs SSD_PB and SSD_N multiples of 16, SSD_Q a multiple of 32 up to 128, SSD_CW 8 or 16 dividing SSD_PB"
#endif
#if BP > NT
#error "ssd_tc needs SSD_N ≤ 256·SSD_PB/SSD_CW (a row of B in one pass of the block)"
#endif

#define TPL (QT / 32) // tokens a lane in the chunk scan

extern "C" __global__ void __launch_bounds__(NT, SSD_MINB) k_ssd_tc(float* y, const bf16_t* x, const void* dt, int dtbf, const void* A, int abf,
                                                             const bf16_t* B, const bf16_t* C, const void* D, int dbf, float* state,
                                                             int L, int H, int P, int Hx, int Hb, int Hc) {
    float* const scal = (float*)(dyn_smem + OFF_F);
    const unsigned sb = smem_u32(dyn_smem);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
    const int b = blockIdx.x / H, h = blockIdx.x % H, p0 = blockIdx.y * PB;
    const int hx = h / (H / Hx), hb = h / (H / Hb), hc = h / (H / Hc);
    const float a2 = (A ? ld_elem(A, abf, h) : 0.f) * LOG2E;
    const float dd = D ? ld_elem(D, dbf, h) : 0.f;
    const i64 row0 = (i64)b * L;
    const int nchunks = (L + QT - 1) / QT;

    // Per-lane byte offsets of ldmatrix rows within a tile (stride S):
    // A from [m][k] (C, W); B from [n][k], x4 over two n8 tiles (B for G);
    // B from [k][n], x4 over two k16 steps (x, the warp's columns); A from
    // [k][m] (Bᵀ for the state).
    const int r8 = lane & 7, j1 = (lane >> 3) & 1, j2 = lane >> 4;
    const unsigned oA_C = ((r8 + 8 * j1) * SN + 8 * j2) * 2, oA_W = ((r8 + 8 * j1) * SQ + 8 * j2) * 2;
    const unsigned oB_N = ((r8 + 8 * j2) * SN + 8 * j1) * 2;
    const unsigned oBt_X = ((r8 + 8 * j1 + 16 * j2) * SX + CW * warp) * 2;
    const unsigned oAt_B = ((r8 + 8 * j2) * SN + 8 * j1) * 2;

    // cp.async of one chunk's rows in 16-byte pieces, zeros past the end
    // of the sequence. A tensor of `pieces` pieces a row is copied by the
    // first (NT / pieces)·pieces threads: thread t takes 16-byte column
    // t % pieces of rows t / pieces + r·(NT / pieces), r = 0, 1, …, so its
    // source advances by a fixed stride and its destinations by constants.
    struct Rows {
        const bf16_t* src; // this thread's first piece in the next chunk
        i64 step;          // elements from one row to the next
        unsigned dst;      // shared byte offset of the first piece in a stage
        bool on;           // this thread copies pieces of the tensor
    };
    auto rows_of = [&](const bf16_t* base, i64 step, int pieces, int stride) {
        const int l = tid / pieces, k = tid - l * pieces;
        return Rows{base + l * step + 8 * k, step, (unsigned)(l * stride + 8 * k) * 2, tid < (NT / pieces) * pieces};
    };
    Rows rx = rows_of(x + (row0 * Hx + hx) * (i64)P + p0, (i64)Hx * P, XP, SX);
    Rows rb = rows_of(B + (row0 * Hb + hb) * (i64)NS, (i64)Hb * NS, BP, SN);
    Rows rc = rows_of(C + (row0 * Hc + hc) * (i64)NS, (i64)Hc * NS, BP, SN);
    const i64 ystep = (i64)H * P;
    // Copies the next chunk (chunk c) of a tensor into the shared buffer at
    // dst and advances to the chunk after it. Rows past the sequence are
    // zero-filled (no bytes read; the address given is the tensor's start).
    auto load_rows = [&](Rows& rw, unsigned dst, int pieces, int stride, int c, const bf16_t* any) {
        const int rs = NT / pieces; // rows a pass
        const int left = L - c * QT; // rows of this chunk inside the sequence
        if (rw.on) {
            const int l0 = tid / pieces;
            if (left >= QT) {
#pragma unroll
                for (int r = 0; r < (QT + rs - 1) / rs; r++) {
                    if (QT % rs == 0 || l0 + r * rs < QT) cp_async16(dst + rw.dst + r * rs * stride * 2, rw.src + r * rs * rw.step, 16);
                }
            } else {
#pragma unroll
                for (int r = 0; r < (QT + rs - 1) / rs; r++) {
                    const bool in = l0 + r * rs < left;
                    if (QT % rs == 0 || l0 + r * rs < QT) cp_async16(dst + rw.dst + r * rs * stride * 2, in ? rw.src + r * rs * rw.step : any, in ? 16 : 0);
                }
            }
        }
        rw.src += QT * rw.step;
    };
    auto load_xb = [&](int c, int stage) {
        load_rows(rx, sb + OFF_X + stage * QT * SX * 2, XP, SX, c, x);
        load_rows(rb, sb + OFF_B + stage * QT * SN * 2, BP, SN, c, B);
    };
    auto load_c = [&](int c) { load_rows(rc, sb + OFF_C, BP, SN, c, C); };

    // The state, transposed: hT[i][j][q] is Hᵀ[n][p] with n = 16i + g (+8
    // for q ≥ 2), p = CW·warp + 8j + 2tig (+1 for odd q).
    float hT[NK][NJ][4];
    const i64 sbase = (((i64)b * H + h) * P + p0 + CW * warp + 2 * tig) * NS + g;
#pragma unroll
    for (int i = 0; i < NK; i++) {
#pragma unroll
        for (int j = 0; j < NJ; j++) {
#pragma unroll
            for (int q = 0; q < 4; q++)
                hT[i][j][q] = state ? state[sbase + (8 * j + (q & 1)) * NS + 16 * i + 8 * (q >> 1)] : 0.f;
        }
    }

    // The causal 16×16 blocks of G this warp computes: blocks warp + u·NW
    // of the row-major list (16-row block i, 16-column block jj ≤ i),
    // packed as i | jj << 8.
    int gblk[NGB];
#pragma unroll
    for (int u = 0; u < NGB; u++) {
        const int t = warp + u * NW;
        int i = 0;
        while ((i + 1) * (i + 2) / 2 <= t) i++;
        gblk[u] = i | (t - i * (i + 1) / 2) << 8;
    }

    // Prologue: chunk 0's inputs and scalars, chunk 1's dt in registers.
    float dvn[TPL];
    load_xb(0, 0);
    load_c(0);
    cp_async_commit();
    if (warp == 0) {
        float dv[TPL];
        tc_load_dt(dv, dt, dtbf, row0 * H + h, H, 0, L);
        tc_load_dt(dvn, dt, dtbf, row0 * H + h, H, QT, L);
        tc_chunk_scan(dv, a2, scal);
    }

    // Two barriers a chunk. Hazards: x/B stage (c+1)&1 and the C buffer
    // are refilled only after the barrier that follows their last reads
    // (the previous chunk's, resp. this chunk's Y_off and G); W is
    // rewritten in the next chunk after its first barrier; the scalars of
    // chunk c+1 go to the other half of a double buffer. The state is
    // private to its warp.
    for (int c = 0; c < nchunks; c++) {
        const int st = c & 1;
        const float* cs = scal + st * 4 * QT;
        const float* ecs = cs + QT;
        const float* wd = cs + 2 * QT;
        const float* dts = cs + 3 * QT;
        cp_async_wait0(); // this chunk's x, B and C have landed
        __syncthreads();  // (A) inputs and scalars are visible, W is free
        if (!(SSD_SKIP & 16) && c + 1 < nchunks) load_xb(c + 1, st ^ 1);
        cp_async_commit();

        const unsigned sX = sb + OFF_X + st * QT * SX * 2, sB = sb + OFF_B + st * QT * SN * 2;

        // 2. Y_off = exp(cs_l)·C·Hᵀ for the warp's columns of every row.
        float yacc[LB][NJ][4];
#pragma unroll
        for (int i = 0; i < LB; i++) {
#pragma unroll
            for (int j = 0; j < NJ; j++) yacc[i][j][0] = yacc[i][j][1] = yacc[i][j][2] = yacc[i][j][3] = 0.f;
        }
#pragma unroll
        for (int k = 0; k < ((SSD_SKIP & 1) ? 0 : NK); k++) {
            // B fragments of Hᵀ rows 16k.. (hi, lo) for each n8 tile: the
            // accumulator rows g and g+8, packed, transposed.
            unsigned hh[NJ][2], hl[NJ][2];
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                split_bf16x2(hT[k][j][0], hT[k][j][1], hh[j][0], hl[j][0]);
                split_bf16x2(hT[k][j][2], hT[k][j][3], hh[j][1], hl[j][1]);
                hh[j][0] = movm_trans(hh[j][0]);
                hh[j][1] = movm_trans(hh[j][1]);
                hl[j][0] = movm_trans(hl[j][0]);
                hl[j][1] = movm_trans(hl[j][1]);
            }
            unsigned af[LB][4];
#pragma unroll
            for (int i = 0; i < LB; i++) ldsm_x4(af[i], sb + OFF_C + ((16 * i) * SN + 16 * k) * 2 + oA_C);
            // hi terms of every tile, then lo terms: consecutive mma
            // instructions never wait on each other's accumulator.
#pragma unroll
            for (int i = 0; i < LB; i++) {
#pragma unroll
                for (int j = 0; j < NJ; j++) mma_bf16_16816(yacc[i][j], af[i], hh[j]);
            }
#pragma unroll
            for (int i = 0; i < LB; i++) {
#pragma unroll
                for (int j = 0; j < NJ; j++) mma_bf16_16816(yacc[i][j], af[i], hl[j]);
            }
        }
#pragma unroll
        for (int i = 0; i < LB; i++) {
            const float e0 = ecs[16 * i + g], e1 = ecs[16 * i + g + 8];
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                yacc[i][j][0] *= e0;
                yacc[i][j][1] *= e0;
                yacc[i][j][2] *= e1;
                yacc[i][j][3] *= e1;
            }
        }

        // 3. W[l][s] of one G tile (rows 16i.., columns 8j..), as hi + lo.
        auto emit_w = [&](const float* acc, int i, int j) {
            const int s = 8 * j + 2 * tig;
            const float2 css = *(const float2*)(cs + s), dss = *(const float2*)(dts + s);
#pragma unroll
            for (int q = 0; q < 4; q += 2) {
                const int l = 16 * i + g + 8 * (q >> 1);
                const float cl = cs[l];
                float w0 = acc[q] * ex2_ftz(fminf(cl - css.x, 0.f)) * dss.x;
                float w1 = acc[q + 1] * ex2_ftz(fminf(cl - css.y, 0.f)) * dss.y;
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
        // G on the warp's 16×16 blocks: one C fragment and two n8 tiles of
        // B a k step.
#pragma unroll
        for (int u = 0; u < ((SSD_SKIP & 2) ? 0 : NGB); u++) {
            if (warp + u * NW >= GB) break;
            const int i = gblk[u] & 0xff, jj = gblk[u] >> 8;
            float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
            for (int k = 0; k < NK; k++) {
                unsigned af[4], bfr[4];
                ldsm_x4(af, sb + OFF_C + ((16 * i) * SN + 16 * k) * 2 + oA_C);
                ldsm_x4(bfr, sB + ((16 * jj) * SN + 16 * k) * 2 + oB_N);
                mma_bf16_16816(acc[0], af, bfr);
                mma_bf16_16816(acc[1], af, bfr + 2);
            }
            emit_w(acc[0], i, 2 * jj);
            emit_w(acc[1], i, 2 * jj + 1);
        }
        __syncthreads(); // (B) W is complete; Y_off and G have read C
        if (!(SSD_SKIP & 16) && c + 1 < nchunks) load_c(c + 1);
        cp_async_commit();
        if (warp == 0 && c + 1 < nchunks) {
            // Scalars of the next chunk, into the other half of the buffer.
            float dv[TPL];
#pragma unroll
            for (int k = 0; k < TPL; k++) dv[k] = dvn[k];
            tc_load_dt(dvn, dt, dtbf, row0 * H + h, H, (c + 2) * QT, L);
            tc_chunk_scan(dv, a2, scal + (st ^ 1) * 4 * QT);
        }

        // 4. y = Y_off + W·x + D·x, stored.
        unsigned xf[LB][NJ][2]; // B fragments of x: s-step k, n8 tile j
#pragma unroll
        for (int k = 0; k < LB; k += 2) {
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                unsigned r4[4];
                ldsm_x4_trans(r4, sX + ((16 * k) * SX + 8 * j) * 2 + oBt_X);
                xf[k][j][0] = r4[0], xf[k][j][1] = r4[1], xf[k + 1][j][0] = r4[2], xf[k + 1][j][1] = r4[3];
            }
        }
#pragma unroll
        for (int k = 0; k < ((SSD_SKIP & 4) ? 0 : LB); k++) {
#pragma unroll
            for (int i = k; i < LB; i++) {
                unsigned wh[4];
                ldsm_x4(wh, sb + OFF_WH + ((16 * i) * SQ + 16 * k) * 2 + oA_W);
#pragma unroll
                for (int j = 0; j < NJ; j++) mma_bf16_16816(yacc[i][j], wh, xf[k][j]);
            }
#pragma unroll
            for (int i = k; i < LB; i++) {
                unsigned wl[4];
                ldsm_x4(wl, sb + OFF_WL + ((16 * i) * SQ + 16 * k) * 2 + oA_W);
#pragma unroll
                for (int j = 0; j < NJ; j++) mma_bf16_16816(yacc[i][j], wl, xf[k][j]);
            }
        }
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            // D·x from the A-fragment layout of x (rows g, g+8 of each
            // 16-row block, columns 8j + 2tig, +1), then the store.
            float* yr = y + ((row0 + (i64)c * QT + g) * H + h) * (i64)P + p0 + CW * warp + 8 * j + 2 * tig;
            const int left = L - c * QT - g;
#pragma unroll
            for (int i = 0; i < LB; i += 2) {
                unsigned xr[4]; // rows 16i + g, +8, +16, +24
                ldsm_x4(xr, sX + ((16 * i + lane) * SX + CW * warp + 8 * j) * 2);
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const float* a = yacc[i + (q >> 1)][j] + 2 * (q & 1);
                    if (8 * (2 * i + q) < left) st_global_f2(yr, a[0] + dd * bf16_lo(xr[q]), a[1] + dd * bf16_hi(xr[q]));
                    yr += 8 * ystep;
                }
            }
        }

        // 5. The state update, on the same x fragments.
        if (SSD_SKIP & 8) continue;
        const float decay = ecs[QT - 1];
#pragma unroll
        for (int i = 0; i < NK; i++) {
#pragma unroll
            for (int j = 0; j < NJ; j++) {
#pragma unroll
                for (int q = 0; q < 4; q++) hT[i][j][q] *= decay;
            }
        }
#pragma unroll
        for (int k = 0; k < LB; k++) {
            // Fragment registers 0 and 1 hold s = 16k + 2tig (+1) and s + 8 (+9).
            const int s0 = 16 * k + 2 * tig;
            const float2 w0 = *(const float2*)(wd + s0), w1 = *(const float2*)(wd + s0 + 8);
            unsigned xh[NJ][2], xl[NJ][2];
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                split_bf16x2(bf16_lo(xf[k][j][0]) * w0.x, bf16_hi(xf[k][j][0]) * w0.y, xh[j][0], xl[j][0]);
                split_bf16x2(bf16_lo(xf[k][j][1]) * w1.x, bf16_hi(xf[k][j][1]) * w1.y, xh[j][1], xl[j][1]);
            }
            unsigned af[NK][4];
#pragma unroll
            for (int i = 0; i < NK; i++) ldsm_x4_trans(af[i], sB + ((16 * k) * SN + 16 * i) * 2 + oAt_B);
#pragma unroll
            for (int i = 0; i < NK; i++) {
#pragma unroll
                for (int j = 0; j < NJ; j++) mma_bf16_16816(hT[i][j], af[i], xh[j]);
            }
#pragma unroll
            for (int i = 0; i < NK; i++) {
#pragma unroll
                for (int j = 0; j < NJ; j++) mma_bf16_16816(hT[i][j], af[i], xl[j]);
            }
        }
    }
    cp_async_wait0();
    if (state) {
#pragma unroll
        for (int i = 0; i < NK; i++) {
#pragma unroll
            for (int j = 0; j < NJ; j++) {
#pragma unroll
                for (int q = 0; q < 4; q++) state[sbase + (8 * j + (q & 1)) * NS + 16 * i + 8 * (q >> 1)] = hT[i][j][q];
            }
        }
    }
}
