// decode_attention.cu: softmax attention of a few queries (lq <= 4) against a
// long key/value cache, split over the keys (flash-decoding). The keys
// [0, Lk) of one (batch, head) are cut into S chunks of `chunk` keys; block
// (s, b*H + h) computes, for each query, the partial online-softmax state of
// chunk s — its maximum score m, Σ exp(score − m) and Σ exp(score − m)·v — in
// float32, and k_decode_merge combines the S partials of each query in split
// order (no atomics: the same bits run after run on one device).
//
// Inside a block, 16 groups of 8 lanes each take one key at a time; lane g of
// a group holds dims g, g+8, …, g+8(DEC_DPT−1) of q, k and v (DEC_DPT =
// ceil(P/8), set per head size at compile time), so one load instruction of a
// warp reads 4 rows, 8 consecutive elements each. A group's score is its
// lanes' partial dots summed by three xor-shuffles. Each group keeps its own
// online softmax; the 4 groups of a warp merge by shuffles, the 4 warps
// through shared memory. Head h reads kv head h/(H/Hkv) (GQA). Causal: query
// i (position qpos0 + i) sees keys ≤ qpos0 + i.

#ifndef DEC_DPT
#define DEC_DPT 16
#endif
#define DEC_P_MAX (8 * DEC_DPT)
#define DEC_THREADS 128
#define DEC_GROUPS (DEC_THREADS / 8)
#define DEC_NQ_MAX 4

// The partial state of (row r = (b*NQ + i)*H + h, split s) is
// part[(r*S + s)*(P + 2) + …]: P weighted sums, then m, then the sum of
// exponentials. A split where query i sees no key writes m = −inf, l = 0.
// static: internal linkage for the shared arrays too (the emulator loads one
// host library per head size; shared symbols of one name would collide).
template <int NQ>
static __device__ __forceinline__ void decode_partial(float* part, const void* q, int qbf, const void* k, int kbf, const void* v, int vbf,
                                               int kvRows, int qpos0, int H, int Hkv, int P, float scale, int S, int chunk) {
    __shared__ float Ws[4][NQ][DEC_P_MAX];
    __shared__ float Wm[4][NQ], Wl[4][NQ];
    const float NEG_INF = __int_as_float(0xff800000);

    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane & 7, gw = lane >> 3;
    int s = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, hk = h / (H / Hkv);
    int Lk = qpos0 + NQ;
    int c0 = s * chunk, c1 = min(Lk, c0 + chunk);

    float qr[NQ][DEC_DPT], acc[NQ][DEC_DPT], m[NQ], l[NQ];
#pragma unroll
    for (int i = 0; i < NQ; i++) {
        m[i] = NEG_INF;
        l[i] = 0.f;
        i64 qrow = (((i64)b * NQ + i) * H + h) * P;
#pragma unroll
        for (int j = 0; j < DEC_DPT; j++) {
            int d = g + 8 * j;
            qr[i][j] = d < P ? ld_elem(q, qbf, qrow + d) : 0.f;
            acc[i][j] = 0.f;
        }
    }
    // Warp w takes keys c0 + 4w + 16n + gw: the loop is uniform over the
    // warp, so every lane joins the shuffles.
    for (int t0 = c0 + 4 * warp; t0 < c1; t0 += 4 * 4) {
        int t = t0 + gw;
        bool valid = t < c1;
        float kr[DEC_DPT], vr[DEC_DPT];
        i64 krow = valid ? (((i64)b * kvRows + t) * Hkv + hk) * P : 0;
#pragma unroll
        for (int j = 0; j < DEC_DPT; j++) {
            int d = g + 8 * j;
            bool in = valid && d < P;
            kr[j] = in ? ld_elem(k, kbf, krow + d) : 0.f;
            vr[j] = in ? ld_elem(v, vbf, krow + d) : 0.f;
        }
#pragma unroll
        for (int i = 0; i < NQ; i++) {
            float dot = 0.f;
#pragma unroll
            for (int j = 0; j < DEC_DPT; j++) dot += qr[i][j] * kr[j];
            dot += __shfl_xor_sync(0xffffffffu, dot, 1);
            dot += __shfl_xor_sync(0xffffffffu, dot, 2);
            dot += __shfl_xor_sync(0xffffffffu, dot, 4);
            if (!valid || t > qpos0 + i) continue;
            float sc = dot * scale;
            float mn = fmaxf(m[i], sc);
            float corr = m[i] == NEG_INF ? 0.f : expf(m[i] - mn);
            float p = expf(sc - mn);
            l[i] = l[i] * corr + p;
            m[i] = mn;
#pragma unroll
            for (int j = 0; j < DEC_DPT; j++) acc[i][j] = acc[i][j] * corr + p * vr[j];
        }
    }
    // Merge the 4 groups of the warp (lanes g, g+8, g+16, g+24 hold the same
    // dims): rescale to the warp's maximum, then sum by xor-shuffles (each
    // addition commutative, so every lane ends with the same bits).
#pragma unroll
    for (int i = 0; i < NQ; i++) {
        float mw = fmaxf(m[i], __shfl_xor_sync(0xffffffffu, m[i], 8));
        mw = fmaxf(mw, __shfl_xor_sync(0xffffffffu, mw, 16));
        float f = m[i] == NEG_INF ? 0.f : expf(m[i] - mw);
        float li = l[i] * f;
        li += __shfl_xor_sync(0xffffffffu, li, 8);
        li += __shfl_xor_sync(0xffffffffu, li, 16);
#pragma unroll
        for (int j = 0; j < DEC_DPT; j++) {
            float a = acc[i][j] * f;
            a += __shfl_xor_sync(0xffffffffu, a, 8);
            a += __shfl_xor_sync(0xffffffffu, a, 16);
            int d = g + 8 * j;
            if (gw == 0 && d < P) Ws[warp][i][d] = a;
        }
        if (lane == 0) {
            Wm[warp][i] = mw;
            Wl[warp][i] = li;
        }
    }
    __syncthreads();
    // Merge the 4 warps in order and write the block's partial.
    for (int e = tid; e < NQ * (P + 2); e += DEC_THREADS) {
        int i = e / (P + 2), d = e % (P + 2);
        float mb = fmaxf(fmaxf(Wm[0][i], Wm[1][i]), fmaxf(Wm[2][i], Wm[3][i]));
        float r = 0.f;
        if (d == P) {
            r = mb;
        } else {
#pragma unroll
            for (int w = 0; w < 4; w++) {
                float f = Wm[w][i] == NEG_INF ? 0.f : expf(Wm[w][i] - mb);
                r += f * (d < P ? Ws[w][i][d] : Wl[w][i]);
            }
        }
        i64 row = ((i64)b * NQ + i) * H + h;
        part[(row * S + s) * (P + 2) + d] = r;
    }
}

#define DEC_KERNEL(NQ)                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS)                                                                            \
        k_decode_attention_q##NQ(float* part, const void* q, int qbf, const void* k, int kbf, const void* v, int vbf, int kvRows,        \
                                 int qpos0, int H, int Hkv, int P, float scale, int S, int chunk) {                                      \
        decode_partial<NQ>(part, q, qbf, k, kbf, v, vbf, kvRows, qpos0, H, Hkv, P, scale, S, chunk);                                     \
    }
DEC_KERNEL(1)
DEC_KERNEL(2)
DEC_KERNEL(3)
DEC_KERNEL(4)

// out row r (of rows = b*NQ*H, each P wide) from its S partials: the
// maximum of their m, then Σ_s e^(m_s − M)·acc_s / Σ_s e^(m_s − M)·l_s,
// both sums in split order. One block a row.
extern "C" __global__ void __launch_bounds__(DEC_THREADS) k_decode_merge(float* out, const float* part, int P, int S) {
    const float NEG_INF = __int_as_float(0xff800000);
    i64 r = blockIdx.x;
    const float* pr = part + r * S * (P + 2);
    float M = NEG_INF;
    for (int s = 0; s < S; s++) M = fmaxf(M, pr[s * (P + 2) + P]);
    for (int d = threadIdx.x; d < P; d += DEC_THREADS) {
        float L = 0.f, a = 0.f;
        for (int s = 0; s < S; s++) {
            float ms = pr[s * (P + 2) + P];
            if (ms == NEG_INF) continue;
            float f = expf(ms - M);
            L += f * pr[s * (P + 2) + P + 1];
            a += f * pr[s * (P + 2) + d];
        }
        out[r * P + d] = a / L;
    }
}
