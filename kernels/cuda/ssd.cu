// ssd.cu: the sequential Mamba-2 recurrence, one warp per (batch, head, p):
//   S_t = exp(dt_t·A_h)·S_{t−1} + dt_t·x_t ⊗ B_t,  y_t = S_t·C_t + D_h·x_t.
// Lane j holds state columns n = j, j+32, …; the state and y are kept in
// double. Head h reads x head h/(H/Hx), B group h/(H/Hb), C group h/(H/Hc)
// (so the same kernel serves linear attention: x = v, B = k, C = q).
// dt may be null (1), A null (0), D null (0), state null (zero initial
// state, final state dropped).

template <int NPL>
__device__ __forceinline__ void ssd_recurrence(float* y, const void* x, int xbf, const void* dt, int dtbf, const void* A, int abf,
                                               const void* B, int bbf, const void* C, int cbf, const void* D, int dbf, float* state,
                                               int batch, int L, int H, int P, int N, int Hx, int Hb, int Hc) {
    int lane = threadIdx.x & 31;
    i64 wid = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (wid >= (i64)batch * H * P) return;
    int p = (int)(wid % P);
    int h = (int)((wid / P) % H);
    int b = (int)(wid / ((i64)P * H));
    int hx = h / (H / Hx), hb = h / (H / Hb), hc = h / (H / Hc);
    double a = A ? (double)ld_elem(A, abf, h) : 0.0;
    double d = D ? (double)ld_elem(D, dbf, h) : 0.0;
    double S[NPL];
    i64 sbase = (((i64)b * H + h) * P + p) * N;
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        int n = lane + 32 * k;
        S[k] = (state && n < N) ? (double)state[sbase + n] : 0.0;
    }
    for (int t = 0; t < L; t++) {
        i64 bt = (i64)b * L + t;
        double dtv = dt ? (double)ld_elem(dt, dtbf, bt * H + h) : 1.0;
        double decay = exp(dtv * a);
        double xv = (double)ld_elem(x, xbf, (bt * Hx + hx) * P + p);
        double acc = 0.0;
#pragma unroll
        for (int k = 0; k < NPL; k++) {
            int n = lane + 32 * k;
            if (n < N) {
                double bv = (double)ld_elem(B, bbf, (bt * Hb + hb) * N + n);
                double cv = (double)ld_elem(C, cbf, (bt * Hc + hc) * N + n);
                S[k] = decay * S[k] + dtv * xv * bv;
                acc += S[k] * cv;
            }
        }
        acc = warp_sum_d(acc);
        if (lane == 0) y[(bt * H + h) * P + p] = (float)(acc + d * xv);
    }
    if (state) {
#pragma unroll
        for (int k = 0; k < NPL; k++) {
            int n = lane + 32 * k;
            if (n < N) state[sbase + n] = (float)S[k];
        }
    }
}

#define SSD_REC(NPL)                                                                                                                    \
    extern "C" __global__ void k_ssd_recurrence_##NPL(float* y, const void* x, int xbf, const void* dt, int dtbf, const void* A, int abf, \
                                                      const void* B, int bbf, const void* C, int cbf, const void* D, int dbf,           \
                                                      float* state, int batch, int L, int H, int P, int N, int Hx, int Hb, int Hc) {    \
        ssd_recurrence<NPL>(y, x, xbf, dt, dtbf, A, abf, B, bbf, C, cbf, D, dbf, state, batch, L, H, P, N, Hx, Hb, Hc);                \
    }
SSD_REC(1)
SSD_REC(2)
SSD_REC(4)
SSD_REC(8)
