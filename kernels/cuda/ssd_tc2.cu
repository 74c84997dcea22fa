// ssd_tc2.cu: ssd_tc.cu's tensor-core chunked scan, software-pipelined to
// one barrier a chunk (bf16 x, B and C; dt, A, D of either dtype; float32
// state and output). Same -D parameters as ssd_tc.cu: SSD_Q (chunk, 32 or
// 64), SSD_PB (headdim columns a block), SSD_N (d_state), SSD_CW (headdim
// columns a warp, 8 or 16). Same arithmetic, operand by operand (bf16
// products accumulated in float32, every float32 operand as bf16 hi + lo),
// so the same rounding as ssd_tc.cu.
//
// ssd_tc.cu has two barriers a chunk, and the second one waits for W
// (G = C·Bᵀ on the causal 16×16 blocks, decayed, split): the longest stage,
// with nothing else for a warp to do meanwhile. Here W of chunk c+1 is
// computed during chunk c, into the other half of a double buffer, so the
// whole of a chunk lies between one barrier and the next:
//
//   barrier (A_c): x of chunk c, B and C of chunk c+1, W of chunk c and the
//     scalars of chunk c+1 are complete; every warp has finished chunk c−1.
//   then, by every warp:
//     - cp.async of x (chunk c+1, two stages) and of B and C (chunk c+2,
//       three stages: chunk c and c+1 are being read);
//     - G and W of chunk c+1 (its share of the causal blocks);
//     - Y_off = exp(cs_l)·C·Hᵀ, y = Y_off + W·x + D·x stored, and
//       Hᵀ ← exp(cs_last)·Hᵀ + Bᵀ·(wd ∘ x) for chunk c, as in ssd_tc.cu;
//     - warp 0: the scalars of chunk c+2 (three stages).
//
// The buffers freed by a barrier are exactly those read during the chunk
// before it, so every write of a chunk goes to a slot nobody reads in
// that chunk. To keep two blocks a multiprocessor at chunk 64 (113,664
// bytes at headdim and d_state 80), W holds only its causal 16×16 blocks
// (10 of 16), each 512 bytes with the two 16-byte halves of a row swapped
// on rows 4–7 and 12–15 (conflict-free ldmatrix and stores without
// padding).
//
// SSD_W1=1 (bf16-precision variant, see below) keeps W as one bf16 term.

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
#define GB (LB * (LB + 1) / 2) // causal 16×16 blocks of G (and of W)
#define NK (NS / 16)       // k16 steps over d_state; m16 tiles of the state
#define NGB ((GB + NW - 1) / NW) // G blocks a warp

// SSD_W1=1: W rounded to one bf16 term (nearest even) instead of hi + lo,
// and W·x in one mma pass instead of two; the W buffers halve. Relative
// error 0.7–1.5e-3 on y (flash-attention class: W·x is the
// softmax-free analogue of P·V, which FlashAttention also rounds to bf16),
// against ~2e-6 with the pair. Y_off, the state update (Hᵀ and wd ∘ x as
// hi + lo) and everything else are unchanged, so the error does not grow
// with the sequence: the state carried from chunk to chunk is as exact as
// with SSD_W1=0. 0 (the default): the exact kernel.
#ifndef SSD_W1
#define SSD_W1 0
#endif
#define WTERMS (SSD_W1 ? 1 : 2) // bf16 terms of W
// Row strides (bf16 elements) of the padded shared tiles: an odd number of
// 16-byte units, so the 8 rows of an ldmatrix land in distinct banks.
#define PAD16(w) ((((w) + 7) / 8) % 2 == 0 ? (((w) + 7) / 8) * 8 + 8 : (((w) + 7) / 8) * 8)
#define SX PAD16(PB)
#define SN PAD16(NS)
// Bytes of one stage of a buffer.
#define XSTAGE (QT * SX * 2)
#define NSTAGE (QT * SN * 2)
#define WSTAGE (GB * 512)
#define FSTAGE (4 * QT * 4)
// Byte offsets of the shared buffers (tc2SharedBytes in ssd_ops.go;
// tc2W1SharedBytes with SSD_W1).
#define OFF_X 0                          // [2][QT][SX] x
#define OFF_B (OFF_X + 2 * XSTAGE)       // [3][QT][SN] B
#define OFF_C (OFF_B + 3 * NSTAGE)       // [3][QT][SN] C
#define OFF_WH (OFF_C + 3 * NSTAGE)      // [2][GB][16][16] W hi (SSD_W1: W), causal blocks
#define OFF_WL (OFF_WH + 2 * WSTAGE)     // [2][GB][16][16] W lo (none with SSD_W1)
#define OFF_F (OFF_WH + WTERMS * 2 * WSTAGE) // float [3][4][QT]: cs, ecs, wd, dts
// 16-byte pieces of one row of x, of B and of C.
#define XP (PB / 8)
#define BP (NS / 8)

// Byte offset of W element (r, col) of a 16×16 block (col even: the pair
// col, col+1): 16-byte half col/8 of row r, halves swapped on rows with
// bit 2 set.
#define WOFF(r, col) ((2 * (r) + ((((col) >> 3) ^ ((r) >> 2)) & 1)) * 16 + ((col) & 7) * 2)

// SSD_SKIP (benchmarks only, wrong results): as in ssd_tc.cu, a bit mask
// of stages left out: 1 Y_off, 2 G and W, 4 W·x, 8 the state update, 16
// the copies of the inputs of later chunks.
#ifndef SSD_SKIP
#define SSD_SKIP 0
#endif

// SSD_GW_LATE=1 computes W of the next chunk after the state update
// instead of first (same results; the benchmarks compare the two orders).
#ifndef SSD_GW_LATE
#define SSD_GW_LATE 0
#endif

// Blocks per multiprocessor the register budget is sized for.
#ifndef SSD_MINB
#define SSD_MINB 2
#endif

#if PB % 16 != 0 || NS % 16 != 0 || (QT != 32 && QT != 64) || (CW != 8 && CW != 16) || PB % CW != 0
#error "ssd_tc2 needs SSD_PB and SSD_N multiples of 16, SSD_Q 32 or 64, SSD_CW 8 or 16 dividing SSD_PB"
#endif
#if BP > NT
#error "ssd_tc2 needs SSD_N ≤ 256·SSD_PB/SSD_CW (a row of B in one pass of the block)"
#endif

#define TPL (QT / 32) // tokens a lane in the chunk scan

extern "C" __global__ void __launch_bounds__(NT, SSD_MINB) k_ssd_tc2(float* y, const bf16_t* x, const void* dt, int dtbf, const void* A, int abf,
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
    const i64 dtbase = row0 * H + h;
    const int nchunks = (L + QT - 1) / QT;

    // Per-lane byte offsets of ldmatrix rows within a tile (stride S):
    // A from [m][k] (C; W in its 16×16 block layout); B from [n][k], x4
    // over two n8 tiles (B for G); B from [k][n], x4 over two k16 steps (x,
    // the warp's columns); A from [k][m] (Bᵀ for the state).
    const int r8 = lane & 7, j1 = (lane >> 3) & 1, j2 = lane >> 4;
    const unsigned oA_C = ((r8 + 8 * j1) * SN + 8 * j2) * 2, oA_W = WOFF(r8 + 8 * j1, 8 * j2);
    const unsigned oB_N = ((r8 + 8 * j2) * SN + 8 * j1) * 2;
    const unsigned oBt_X = ((r8 + 8 * j1 + 16 * j2) * SX + CW * warp) * 2;
    const unsigned oAt_B = ((r8 + 8 * j2) * SN + 8 * j1) * 2;

    // cp.async of one chunk's rows in 16-byte pieces, zeros past the end
    // of the sequence, as in ssd_tc.cu: thread t takes 16-byte column
    // t % pieces of rows t / pieces + r·(NT / pieces), r = 0, 1, ….
    struct Rows {
        const bf16_t* src; // this thread's first piece in the next chunk to copy
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
    // Copies chunk c of a tensor into the shared stage at dst and advances
    // to chunk c+1 (each tensor's chunks are copied in order). Rows past
    // the sequence are zero-filled (no bytes read; the address given is
    // the tensor's start).
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
    // Stage slots: x by chunk parity, B and C by chunk mod 3.
    auto load_x = [&](int c) { load_rows(rx, sb + OFF_X + (c & 1) * XSTAGE, XP, SX, c, x); };
    auto load_bc = [&](int c) {
        const unsigned s3 = (unsigned)(c % 3) * NSTAGE;
        load_rows(rb, sb + OFF_B + s3, BP, SN, c, B);
        load_rows(rc, sb + OFF_C + s3, BP, SN, c, C);
    };

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
    // packed as i | jj << 8. Block t of the list is also W's block t.
    int gblk[NGB];
#pragma unroll
    for (int u = 0; u < NGB; u++) {
        const int t = warp + u * NW;
        int i = 0;
        while ((i + 1) * (i + 2) / 2 <= t) i++;
        gblk[u] = i | (t - i * (i + 1) / 2) << 8;
    }

    // G and W of chunk cn (B, C and scalars in their stage cn % 3) into W
    // stage cn & 1: the warp's share of the causal blocks.
    auto g_and_w = [&](int cn) {
        const float* cs = scal + (cn % 3) * 4 * QT;
        const float* dts = cs + 3 * QT;
        const unsigned sB = sb + OFF_B + (cn % 3) * NSTAGE, sC = sb + OFF_C + (cn % 3) * NSTAGE;
        unsigned char* const wh = dyn_smem + OFF_WH + (cn & 1) * WSTAGE;
#if !SSD_W1
        unsigned char* const wl = dyn_smem + OFF_WL + (cn & 1) * WSTAGE;
#endif
        // W[l][s] = G·exp(cs_l − cs_s)·dt_s (s ≤ l) of one n8 tile (block
        // row i, columns 8j..) of G block t, as hi + lo (SSD_W1: as one
        // bf16, rounded to nearest even).
        auto emit_w = [&](const float* acc, int t, int i, int j) {
            const int s = 8 * j + 2 * tig;
            const float2 css = *(const float2*)(cs + s), dss = *(const float2*)(dts + s);
#pragma unroll
            for (int q = 0; q < 4; q += 2) {
                const int r = g + 8 * (q >> 1), l = 16 * i + r;
                const float cl = cs[l];
                float w0 = acc[q] * ex2_ftz(fminf(cl - css.x, 0.f)) * dss.x;
                float w1 = acc[q + 1] * ex2_ftz(fminf(cl - css.y, 0.f)) * dss.y;
                if (j >= 2 * i) { // a tile on the diagonal: zero above it
                    w0 = s <= l ? w0 : 0.f;
                    w1 = s + 1 <= l ? w1 : 0.f;
                }
                const int o = t * 512 + WOFF(r, s & 15);
#if SSD_W1
                *(unsigned*)(wh + o) = cvt_bf16x2(w0, w1);
#else
                unsigned hi, lo;
                split_bf16x2(w0, w1, hi, lo);
                *(unsigned*)(wh + o) = hi;
                *(unsigned*)(wl + o) = lo;
#endif
            }
        };
#pragma unroll
        for (int u = 0; u < ((SSD_SKIP & 2) ? 0 : NGB); u++) {
            const int t = warp + u * NW;
            if (GB % NW != 0 && t >= GB) break; // no branch when the blocks divide evenly
            const int i = gblk[u] & 0xff, jj = gblk[u] >> 8;
            float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
            for (int k = 0; k < NK; k++) {
                unsigned af[4], bfr[4];
                ldsm_x4(af, sC + ((16 * i) * SN + 16 * k) * 2 + oA_C);
                ldsm_x4(bfr, sB + ((16 * jj) * SN + 16 * k) * 2 + oB_N);
                mma_bf16_16816(acc[0], af, bfr);
                mma_bf16_16816(acc[1], af, bfr + 2);
            }
            emit_w(acc[0], t, i, 2 * jj);
            emit_w(acc[1], t, i, 2 * jj + 1);
        }
    };

    // Prologue: x, B, C of chunk 0 and B, C of chunk 1; the scalars of
    // chunks 0 and 1, chunk 2's dt in registers; then W of chunk 0.
    float dvn[TPL];
    load_x(0);
    load_bc(0);
    if (nchunks > 1) load_bc(1);
    cp_async_commit();
    if (warp == 0) {
        float dv[TPL];
        tc_load_dt(dv, dt, dtbf, dtbase, H, 0, L);
        tc_chunk_scan(dv, a2, scal);
        tc_load_dt(dv, dt, dtbf, dtbase, H, QT, L);
        tc_chunk_scan(dv, a2, scal + 4 * QT);
        tc_load_dt(dvn, dt, dtbf, dtbase, H, 2 * QT, L);
    }
    cp_async_wait0();
    __syncthreads();
    g_and_w(0);

    // One barrier a chunk; see the top of the file for what it separates.
    for (int c = 0; c < nchunks; c++) {
        const int s3 = c % 3;
        const float* cs = scal + s3 * 4 * QT;
        const float* ecs = cs + QT;
        const float* wd = cs + 2 * QT;
        cp_async_wait0(); // x of chunk c, B and C of chunk c+1 have landed
        __syncthreads();  // (A_c)
        if (!(SSD_SKIP & 16)) {
            if (c + 1 < nchunks) load_x(c + 1);
            if (c + 2 < nchunks) load_bc(c + 2);
        }
        cp_async_commit();
        // W of chunk c+1 (here, or after the state update with
        // SSD_GW_LATE). After the last chunk it is computed from stale
        // stages into a stage nobody reads: cheaper than a branch that
        // would keep the compiler from interleaving it with the rest.
        if (!SSD_GW_LATE) g_and_w(c + 1);

        const unsigned sX = sb + OFF_X + (c & 1) * XSTAGE, sB = sb + OFF_B + s3 * NSTAGE, sC = sb + OFF_C + s3 * NSTAGE;
        const unsigned sWH = sb + OFF_WH + (c & 1) * WSTAGE;
#if !SSD_W1
        const unsigned sWL = sb + OFF_WL + (c & 1) * WSTAGE;
#endif

        // Y_off = exp(cs_l)·C·Hᵀ for the warp's columns of every row.
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
            for (int i = 0; i < LB; i++) ldsm_x4(af[i], sC + ((16 * i) * SN + 16 * k) * 2 + oA_C);
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

        // y = Y_off + W·x + D·x, stored.
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
                unsigned w4[4];
                ldsm_x4(w4, sWH + (i * (i + 1) / 2 + k) * 512 + oA_W);
#pragma unroll
                for (int j = 0; j < NJ; j++) mma_bf16_16816(yacc[i][j], w4, xf[k][j]);
            }
#if !SSD_W1
#pragma unroll
            for (int i = k; i < LB; i++) {
                unsigned w4[4];
                ldsm_x4(w4, sWL + (i * (i + 1) / 2 + k) * 512 + oA_W);
#pragma unroll
                for (int j = 0; j < NJ; j++) mma_bf16_16816(yacc[i][j], w4, xf[k][j]);
            }
#endif
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

        // Hᵀ ← exp(cs_last)·Hᵀ + Bᵀ·(wd ∘ x), on the same x fragments.
        const float decay = (SSD_SKIP & 8) ? 1.f : ecs[QT - 1];
#pragma unroll
        for (int i = 0; i < NK; i++) {
#pragma unroll
            for (int j = 0; j < NJ; j++) {
#pragma unroll
                for (int q = 0; q < 4; q++) hT[i][j][q] *= decay;
            }
        }
#pragma unroll
        for (int k = 0; k < ((SSD_SKIP & 8) ? 0 : LB); k++) {
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

        if (SSD_GW_LATE) g_and_w(c + 1);

        // Warp 0: the scalars of chunk c+2 into the stage chunk c−1 used
        // (after the rest, so that the chunk's work above is one
        // straight-line block).
        if (warp == 0 && c + 2 < nchunks) {
            float dv[TPL];
#pragma unroll
            for (int k = 0; k < TPL; k++) dv[k] = dvn[k];
            tc_load_dt(dvn, dt, dtbf, dtbase, H, (c + 3) * QT, L);
            tc_chunk_scan(dv, a2, scal + ((c + 2) % 3) * 4 * QT);
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
