// attention.cu: softmax attention, flash style (online softmax, no L×L
// matrix anywhere), on the CUDA cores in float32, for head sizes P up to
// ATT_MAXP. A block of 4 warps takes 16 consecutive queries of one
// (batch, head), 4 per warp, and walks the keys in tiles of 32 held in
// shared memory; lane j scores key j of the tile, lane d accumulates output
// dims d, d+32, …. Head h reads kv head h/(H/Hkv) (GQA).

#define ATT_MAXP 128
#define DPL (ATT_MAXP / 32)
#define QPW 4
#define QPB (4 * QPW)
#define KT 32

// Queries: Lq rows of q and out per sequence, at positions qpos0 + t.
// Keys and values: the first Lk of kvRows rows of k and v per sequence.
// Causal: the query at position qpos0 + t sees keys s ≤ qpos0 + t.
extern "C" __global__ void __launch_bounds__(128) k_softmax_attention(float* out, const void* q, int qbf, const void* k, int kbf, const void* v,
                                                                       int vbf, int Lq, int kvRows, int Lk, int qpos0, int H, int Hkv, int AP,
                                                                       float scale, int causal) {
    __shared__ float Qs[QPB][ATT_MAXP];
    __shared__ float Ks[KT][ATT_MAXP + 1];
    __shared__ float Vs[KT][ATT_MAXP];
    const float NEG_INF = __int_as_float(0xff800000);

    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    int bh = blockIdx.y, b = bh / H, h = bh % H, hk = h / (H / Hkv);
    int q0 = blockIdx.x * QPB;
    i64 row0 = (i64)b * Lq, krow0 = (i64)b * kvRows;

    for (int e = tid; e < QPB * AP; e += 128) {
        int qi = e / AP, d = e % AP, t = q0 + qi;
        Qs[qi][d] = t < Lq ? ld_elem(q, qbf, ((row0 + t) * H + h) * AP + d) : 0.f;
    }
    float m[QPW], lsum[QPW], acc[QPW][DPL];
#pragma unroll
    for (int i = 0; i < QPW; i++) {
        m[i] = NEG_INF;
        lsum[i] = 0.f;
#pragma unroll
        for (int d = 0; d < DPL; d++) acc[i][d] = 0.f;
    }
    int kend = Lk;
    if (causal) kend = min(Lk, qpos0 + q0 + QPB);
    for (int k0 = 0; k0 < kend; k0 += KT) {
        __syncthreads(); // the previous tile is no longer read
        for (int e = tid; e < KT * AP; e += 128) {
            int j = e / AP, d = e % AP, t = k0 + j;
            i64 src = ((krow0 + t) * Hkv + hk) * AP + d;
            Ks[j][d] = t < Lk ? ld_elem(k, kbf, src) : 0.f;
            Vs[j][d] = t < Lk ? ld_elem(v, vbf, src) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < QPW; i++) {
            int qi = warp * QPW + i, t = q0 + qi, key = k0 + lane;
            bool ok = t < Lq && key < Lk && (!causal || key <= qpos0 + t);
            float s = NEG_INF;
            if (ok) {
                float dot = 0.f;
                for (int d = 0; d < AP; d++) dot += Qs[qi][d] * Ks[lane][d];
                s = dot * scale;
            }
            float mt = warp_max(s);
            if (mt == NEG_INF) continue; // no key of this tile for this query (uniform over the warp)
            float mn = fmaxf(m[i], mt);
            float corr = m[i] == NEG_INF ? 0.f : expf(m[i] - mn);
            float p = ok ? expf(s - mn) : 0.f;
            lsum[i] = lsum[i] * corr + warp_sum(p);
            m[i] = mn;
#pragma unroll
            for (int d = 0; d < DPL; d++) acc[i][d] *= corr;
            for (int j = 0; j < KT; j++) {
                float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                for (int d = 0; d < DPL; d++) {
                    int dd = lane + 32 * d;
                    if (dd < AP) acc[i][d] += pj * Vs[j][dd];
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < QPW; i++) {
        int t = q0 + warp * QPW + i;
        if (t >= Lq) continue;
#pragma unroll
        for (int d = 0; d < DPL; d++) {
            int dd = lane + 32 * d;
            if (dd < AP) out[((row0 + t) * H + h) * AP + dd] = acc[i][d] / lsum[i];
        }
    }
}
