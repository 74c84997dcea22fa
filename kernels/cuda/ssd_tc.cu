// ssd_tc.cu: chunked scan on the tensor cores for bf16 x, B and C (dt, A,
// D of either dtype; float32 state and output). One block walks the chunks
// of one (batch, head) for SSD_PB headdim columns; it has SSD_PB/8 warps.
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
//      the d_state columns), becomes exp(cs_last)·H + xᵀ·(wd ∘ B), where
//      wd ∘ B is split into bf16 hi + lo in registers.
// bf16 products are exact and accumulate in float32; every float32 operand
// (W, H, wd ∘ B) is carried as hi + lo, so each product is good to about
// 2^-17 relative.

#define QT SSD_Q
#define PB SSD_PB
#define NS SSD_N
#define NW (PB / 8)
#define NT (NW * 32)
#define LB (QT / 16) // 16-row blocks of a chunk
#define TG (LB * (LB + 1)) // causal 16×8 tiles of G
// Row strides (bf16 elements) of the shared tiles: an odd number of 16-byte
// units, so the 8 rows of an ldmatrix land in distinct banks.
#define PAD16(w) ((((w) + 7) / 8) % 2 == 0 ? (((w) + 7) / 8) * 8 + 8 : (((w) + 7) / 8) * 8)
#define SX PAD16(PB)
#define SN PAD16(NS)
#define SQ PAD16(QT)

#if PB % 16 != 0 || NS % 16 != 0 || QT % 16 != 0 || QT > 32 * SSD_SEG
#error "ssd_tc needs SSD_PB, SSD_N and SSD_Q multiples of 16, SSD_Q <= 128"
#endif

// Fragment loaders (see the PTX ISA's m16n8k16 fragment layouts).
// A (16×16) from a row-major [m][k] tile at base (row stride s).
__device__ __forceinline__ void frag_a(unsigned* r, const bf16_t* base, int s) {
    int l = threadIdx.x & 31, j = l >> 3;
    ldsm_x4(r, base + ((l & 7) + 8 * (j & 1)) * s + 8 * (j >> 1));
}
// A (16×16) from a [k][m] tile (the transpose is stored).
__device__ __forceinline__ void frag_a_t(unsigned* r, const bf16_t* base, int s) {
    int l = threadIdx.x & 31, j = l >> 3;
    ldsm_x4_trans(r, base + ((l & 7) + 8 * (j >> 1)) * s + 8 * (j & 1));
}
// B (16×8, k×n) from an [n][k] tile.
__device__ __forceinline__ void frag_b(unsigned* r, const bf16_t* base, int s) {
    int l = threadIdx.x & 15;
    ldsm_x2(r, base + (l & 7) * s + 8 * (l >> 3));
}
// B (16×8, k×n) from a [k][n] tile.
__device__ __forceinline__ void frag_b_t(unsigned* r, const bf16_t* base, int s) {
    int l = threadIdx.x & 15;
    ldsm_x2_trans(r, base + ((l & 7) + 8 * (l >> 3)) * s);
}

extern "C" __global__ void __launch_bounds__(NT) k_ssd_tc(float* y, const bf16_t* x, const void* dt, int dtbf, const void* A, int abf,
                                                          const bf16_t* B, const bf16_t* C, const void* D, int dbf, float* state,
                                                          int L, int H, int P, int Hx, int Hb, int Hc) {
    bf16_t* Xs = (bf16_t*)dyn_smem;     // [2][QT][SX]
    bf16_t* Bs = Xs + 2 * QT * SX;      // [2][QT][SN]
    bf16_t* Cs = Bs + 2 * QT * SN;      // [QT][SN]
    bf16_t* Whi = Cs + QT * SN;         // [QT][SQ]
    bf16_t* Wlo = Whi + QT * SQ;        // [QT][SQ]
    bf16_t* Hhi = Wlo + QT * SQ;        // [PB][SN]
    bf16_t* Hlo = Hhi + PB * SN;        // [PB][SN]
    float* cs = (float*)(Hlo + PB * SN); // [QT] each
    float* ecs = cs + QT;
    float* wd = ecs + QT;
    float* dts = wd + QT;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
    const int b = blockIdx.x / H, h = blockIdx.x % H, p0 = blockIdx.y * PB;
    const int hx = h / (H / Hx), hb = h / (H / Hb), hc = h / (H / Hc);
    const float a = A ? ld_elem(A, abf, h) : 0.f;
    const float dd = D ? ld_elem(D, dbf, h) : 0.f;
    const i64 row0 = (i64)b * L;
    const int nchunks = (L + QT - 1) / QT;

    // cp.async of one chunk's x and B rows (16-byte pieces), then of C.
    auto load_xb = [&](int c, int stage) {
        const int XP = PB / 8, BP = NS / 8;
        for (int e = tid; e < QT * (XP + BP); e += NT) {
            if (e < QT * XP) {
                int l = e / XP, k = e % XP, t = c * QT + l;
                const bf16_t* src = t < L ? x + ((row0 + t) * Hx + hx) * P + p0 + 8 * k : x;
                cp_async16(Xs + (stage * QT + l) * SX + 8 * k, src, t < L ? 16 : 0);
            } else {
                int f = e - QT * XP, l = f / BP, k = f % BP, t = c * QT + l;
                const bf16_t* src = t < L ? B + ((row0 + t) * Hb + hb) * NS + 8 * k : B;
                cp_async16(Bs + (stage * QT + l) * SN + 8 * k, src, t < L ? 16 : 0);
            }
        }
    };
    auto load_c = [&](int c) {
        const int BP = NS / 8;
        for (int e = tid; e < QT * BP; e += NT) {
            int l = e / BP, k = e % BP, t = c * QT + l;
            const bf16_t* src = t < L ? C + ((row0 + t) * Hc + hc) * NS + 8 * k : C;
            cp_async16(Cs + l * SN + 8 * k, src, t < L ? 16 : 0);
        }
    };

    // State accumulators: rows pr+g (+8), columns nb + 8j + 2tig (+1).
    const int pr = 16 * (warp >> 1), nb = (warp & 1) * (NS / 2);
    float hacc[NS / 16][4];
#pragma unroll
    for (int j = 0; j < NS / 16; j++) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            int p = pr + g + 8 * (q >> 1), n = nb + 8 * j + 2 * tig + (q & 1);
            hacc[j][q] = state ? state[(((i64)b * H + h) * P + p0 + p) * NS + n] : 0.f;
        }
    }
    auto store_h = [&]() {
#pragma unroll
        for (int j = 0; j < NS / 16; j++) {
#pragma unroll
            for (int q = 0; q < 4; q += 2) {
                int p = pr + g + 8 * (q >> 1), n = nb + 8 * j + 2 * tig;
                bf16_t h0, l0, h1, l1;
                split_bf16(hacc[j][q], h0, l0);
                split_bf16(hacc[j][q + 1], h1, l1);
                *(unsigned*)(Hhi + p * SN + n) = pack_bf16(h0, h1);
                *(unsigned*)(Hlo + p * SN + n) = pack_bf16(l0, l1);
            }
        }
    };
    store_h();

    float dvn[SSD_SEG];
    if (warp == 0) chunk_load_dt(dvn, dt, dtbf, row0 * H + h, H, 0, QT, L);
    load_xb(0, 0);
    cp_async_commit();
    load_c(0);
    cp_async_commit();

    for (int c = 0; c < nchunks; c++) {
        const int st = c & 1;
        if (c + 1 < nchunks) load_xb(c + 1, st ^ 1);
        cp_async_commit();
        if (warp == 0) {
            float dv[SSD_SEG];
#pragma unroll
            for (int k = 0; k < SSD_SEG; k++) dv[k] = dvn[k];
            if (c + 1 < nchunks) chunk_load_dt(dvn, dt, dtbf, row0 * H + h, H, (c + 1) * QT, QT, L);
            chunk_scan_warp(dv, a, QT, cs, ecs, wd, dts);
        }
        cp_async_wait1(); // this chunk's x, B and C have landed
        __syncthreads();

        const bf16_t* Xc = Xs + st * QT * SX;
        const bf16_t* Bc = Bs + st * QT * SN;

        // 2. W on the causal tiles.
        for (int ti = warp; ti < TG; ti += NW) {
            int i = 0;
            while ((i + 1) * (i + 2) <= ti) i++;
            int j = ti - i * (i + 1);
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int k = 0; k < NS / 16; k++) {
                unsigned af[4], bfr[2];
                frag_a(af, Cs + (16 * i) * SN + 16 * k, SN);
                frag_b(bfr, Bc + (8 * j) * SN + 16 * k, SN);
                mma_bf16_16816(acc, af, bfr);
            }
#pragma unroll
            for (int q = 0; q < 4; q += 2) {
                int l = 16 * i + g + 8 * (q >> 1), s = 8 * j + 2 * tig;
                float w0 = s <= l ? acc[q] * expf(fminf(cs[l] - cs[s], 0.f)) * dts[s] : 0.f;
                float w1 = s + 1 <= l ? acc[q + 1] * expf(fminf(cs[l] - cs[s + 1], 0.f)) * dts[s + 1] : 0.f;
                bf16_t h0, l0, h1, l1;
                split_bf16(w0, h0, l0);
                split_bf16(w1, h1, l1);
                *(unsigned*)(Whi + l * SQ + s) = pack_bf16(h0, h1);
                *(unsigned*)(Wlo + l * SQ + s) = pack_bf16(l0, l1);
            }
        }
        __syncthreads();

        // 3. y for columns 8·warp.. of every row of the chunk.
        float yacc[LB][4];
#pragma unroll
        for (int i = 0; i < LB; i++) yacc[i][0] = yacc[i][1] = yacc[i][2] = yacc[i][3] = 0.f;
#pragma unroll
        for (int k = 0; k < NS / 16; k++) {
            unsigned bh[2], bl[2];
            frag_b(bh, Hhi + (8 * warp) * SN + 16 * k, SN);
            frag_b(bl, Hlo + (8 * warp) * SN + 16 * k, SN);
#pragma unroll
            for (int i = 0; i < LB; i++) {
                unsigned af[4];
                frag_a(af, Cs + (16 * i) * SN + 16 * k, SN);
                mma_bf16_16816(yacc[i], af, bh);
                mma_bf16_16816(yacc[i], af, bl);
            }
        }
#pragma unroll
        for (int i = 0; i < LB; i++) {
            float e0 = ecs[16 * i + g], e1 = ecs[16 * i + g + 8];
            yacc[i][0] *= e0;
            yacc[i][1] *= e0;
            yacc[i][2] *= e1;
            yacc[i][3] *= e1;
        }
#pragma unroll
        for (int k = 0; k < LB; k++) {
            unsigned xf[2];
            frag_b_t(xf, Xc + (16 * k) * SX + 8 * warp, SX);
#pragma unroll
            for (int i = k; i < LB; i++) {
                unsigned wh[4], wl[4];
                frag_a(wh, Whi + (16 * i) * SQ + 16 * k, SQ);
                frag_a(wl, Wlo + (16 * i) * SQ + 16 * k, SQ);
                mma_bf16_16816(yacc[i], wh, xf);
                mma_bf16_16816(yacc[i], wl, xf);
            }
        }
#pragma unroll
        for (int i = 0; i < LB; i++) {
#pragma unroll
            for (int q = 0; q < 4; q += 2) {
                int l = 16 * i + g + 8 * (q >> 1), t = c * QT + l, p = 8 * warp + 2 * tig;
                if (t < L) {
                    float v0 = yacc[i][q] + dd * bf16_to_f32(Xc[l * SX + p]);
                    float v1 = yacc[i][q + 1] + dd * bf16_to_f32(Xc[l * SX + p + 1]);
                    float* dst = y + ((row0 + t) * H + h) * P + p0 + p;
                    dst[0] = v0;
                    dst[1] = v1;
                }
            }
        }

        // 4. The state update.
        const float decay = ecs[QT - 1];
#pragma unroll
        for (int j = 0; j < NS / 16; j++) {
#pragma unroll
            for (int q = 0; q < 4; q++) hacc[j][q] *= decay;
        }
#pragma unroll
        for (int k = 0; k < LB; k++) {
            unsigned af[4];
            frag_a_t(af, Xc + (16 * k) * SX + pr, SX);
            const int s0 = 16 * k + 2 * tig;
            const float w00 = wd[s0], w01 = wd[s0 + 1], w10 = wd[s0 + 8], w11 = wd[s0 + 9];
#pragma unroll
            for (int j = 0; j < NS / 16; j++) {
                unsigned bfr[2], bh[2], bl[2];
                frag_b_t(bfr, Bc + (16 * k) * SN + nb + 8 * j, SN);
                bf16_t hh[4], ll[4];
                split_bf16(bf16_to_f32((bf16_t)(bfr[0] & 0xffffu)) * w00, hh[0], ll[0]);
                split_bf16(bf16_to_f32((bf16_t)(bfr[0] >> 16)) * w01, hh[1], ll[1]);
                split_bf16(bf16_to_f32((bf16_t)(bfr[1] & 0xffffu)) * w10, hh[2], ll[2]);
                split_bf16(bf16_to_f32((bf16_t)(bfr[1] >> 16)) * w11, hh[3], ll[3]);
                bh[0] = pack_bf16(hh[0], hh[1]);
                bh[1] = pack_bf16(hh[2], hh[3]);
                bl[0] = pack_bf16(ll[0], ll[1]);
                bl[1] = pack_bf16(ll[2], ll[3]);
                mma_bf16_16816(hacc[j], af, bh);
                mma_bf16_16816(hacc[j], af, bl);
            }
        }
        __syncthreads(); // all reads of Hhi/Hlo, Cs and this stage are done
        if (c + 1 < nchunks) load_c(c + 1);
        cp_async_commit();
        store_h(); // ordered before the next chunk's reads by its first barrier
    }
    cp_async_wait0();
    if (state) {
#pragma unroll
        for (int j = 0; j < NS / 16; j++) {
#pragma unroll
            for (int q = 0; q < 4; q++) {
                int p = pr + g + 8 * (q >> 1), n = nb + 8 * j + 2 * tig + (q & 1);
                state[(((i64)b * H + h) * P + p0 + p) * NS + n] = hacc[j][q];
            }
        }
    }
}
