// ssd_cc.cu: chunked scan on the CUDA cores for any dtype of x, B, C and
// any sizes (float32 arithmetic and state). One block of 256 threads walks
// the chunks of one (batch, head) in order for pb of the P headdim columns
// (grid.y = P/pb splits P when there are few (batch, head) pairs). A
// chunk's x, B, C, the weights W and the state H all live in shared memory
// (ccSharedBytes in ssd_ops.go gives the size).

extern "C" __global__ void __launch_bounds__(256) k_ssd_cc(float* y, const void* x, int xbf, const void* dt, int dtbf, const void* A, int abf,
                                                           const void* B, int bbf, const void* C, int cbf, const void* D, int dbf,
                                                           float* state, int L, int H, int P, int N, int Hx, int Hb, int Hc, int Q, int pb) {
    const int N1 = N + 1, Q1 = Q + 1;
    float* Xs = (float*)dyn_smem;  // [Q][pb]
    float* Bs = Xs + Q * pb;       // [Q][N1]
    float* Cs = Bs + Q * N1;       // [Q][N1]
    float* W = Cs + Q * N1;        // [Q][Q1]
    float* Hs = W + Q * Q1;        // [pb][N1]: the state
    float* cs = Hs + pb * N1;      // [Q] each
    float* ecs = cs + Q;
    float* wd = ecs + Q;
    float* dts = wd + Q;

    const int tid = threadIdx.x, T = blockDim.x;
    const int b = blockIdx.x / H, h = blockIdx.x % H, p0 = blockIdx.y * pb;
    const int hx = h / (H / Hx), hb = h / (H / Hb), hc = h / (H / Hc);
    const float a = A ? ld_elem(A, abf, h) : 0.f;
    const float dd = D ? ld_elem(D, dbf, h) : 0.f;
    const i64 row0 = (i64)b * L, sbase = ((i64)b * H + h) * P + p0;

    for (int e = tid; e < pb * N; e += T) Hs[(e / N) * N1 + e % N] = state ? state[(sbase + e / N) * N + e % N] : 0.f;

    const int nchunks = (L + Q - 1) / Q;
    for (int c = 0; c < nchunks; c++) {
        const int t0 = c * Q;
        for (int e = tid; e < Q * pb; e += T) {
            int l = e / pb, p = e % pb, t = t0 + l;
            Xs[e] = t < L ? ld_elem(x, xbf, ((row0 + t) * Hx + hx) * P + p0 + p) : 0.f;
        }
        for (int e = tid; e < Q * N; e += T) {
            int l = e / N, n = e % N, t = t0 + l;
            Bs[l * N1 + n] = t < L ? ld_elem(B, bbf, ((row0 + t) * Hb + hb) * N + n) : 0.f;
            Cs[l * N1 + n] = t < L ? ld_elem(C, cbf, ((row0 + t) * Hc + hc) * N + n) : 0.f;
        }
        if (tid < 32) {
            float dv[SSD_SEG];
            chunk_load_dt(dv, dt, dtbf, row0 * H + h, H, t0, Q, L);
            chunk_scan_warp(dv, a * LOG2E, Q, cs, ecs, wd, dts);
        }
        __syncthreads();

        // W[l][s] = (C_l·B_s)·exp(cs_l − cs_s)·dt_s for s ≤ l.
        for (int e = tid; e < Q * Q; e += T) {
            int l = e / Q, s = e % Q;
            float w = 0.f;
            if (s <= l) {
                float g = 0.f;
                for (int n = 0; n < N; n++) g += Cs[l * N1 + n] * Bs[s * N1 + n];
                w = g * exp2f(fminf(cs[l] - cs[s], 0.f)) * dts[s];
            }
            W[l * Q1 + s] = w;
        }
        __syncthreads();

        // y = exp(cs_l)·H·C_l + Σ_{s≤l} W[l][s]·x_s + D·x_l.
        for (int e = tid; e < Q * pb; e += T) {
            int l = e / pb, p = e % pb, t = t0 + l;
            if (t >= L) continue;
            float off = 0.f;
            for (int n = 0; n < N; n++) off += Cs[l * N1 + n] * Hs[p * N1 + n];
            float diag = 0.f;
            for (int s = 0; s <= l; s++) diag += W[l * Q1 + s] * Xs[s * pb + p];
            y[((row0 + t) * H + h) * P + p0 + p] = ecs[l] * off + diag + dd * Xs[l * pb + p];
        }
        __syncthreads(); // Y has read H

        // H ← exp(cs_last)·H + Σ_s wd_s·x_s ⊗ B_s, each thread its own elements.
        const float decay = ecs[Q - 1];
        for (int e = tid; e < pb * N; e += T) {
            int p = e / N, n = e % N;
            float acc = 0.f;
            for (int s = 0; s < Q; s++) acc += Xs[s * pb + p] * wd[s] * Bs[s * N1 + n];
            Hs[p * N1 + n] = decay * Hs[p * N1 + n] + acc;
        }
        __syncthreads(); // H is complete; the chunk buffers may be refilled
    }
    if (state)
        for (int e = tid; e < pb * N; e += T) state[(sbase + e / N) * N + e % N] = Hs[(e / N) * N1 + e % N];
}
