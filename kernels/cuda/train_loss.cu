// train_loss.cu: the distillation losses with their gradients, the float64
// sums of squares, and AdamW (kernels.LossGrad).
//
// Determinism: every sum runs in a fixed order — a thread's elements in
// index order, then a fixed tree over the lanes of a warp and the warps of
// a block, one partial per block (or row), and one final pass over the
// partials by a single block. No atomics: the same inputs give the same
// bits run after run.
//
// The softmax losses take one block per counted row. A thread walks its
// columns (tid, tid + LOSS_THREADS, …) once keeping an online log-sum-exp
// in double — the running maximum m and Σ exp(x − m), rescaled when the
// maximum grows — and a second time, only when a gradient is asked for, to
// add weight·(softmax − target) into it. Logits are read as float32;
// everything after the load is double.

#define LOSS_THREADS 256
#define LOSS_WARPS (LOSS_THREADS / 32)

#ifdef MATSURGERY_EMU
// The emulator's compiler never contracts a·b + c, so the plain operators
// round like the CUDA intrinsics.
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __dsqrt_rn(double a) { return sqrt(a); }
#endif

__device__ __forceinline__ double loss_neg_inf() { return (double)__int_as_float(0xff800000); }

// An online log-sum-exp: max m and s = Σ exp(x − m), with a = Σ exp(x −
// m)·d for a weight d of each term (the KL's (t − s)/T; unused by the
// cross-entropy). −∞ terms are probabilities of 0 and are skipped; a NaN
// or +∞ makes s NaN.
struct OnlineLSE {
    double m, s, a;
};

__device__ __forceinline__ OnlineLSE lse_empty() {
    OnlineLSE r;
    r.m = loss_neg_inf();
    r.s = 0.0;
    r.a = 0.0;
    return r;
}

__device__ __forceinline__ void lse_add(OnlineLSE& o, double x, double d) {
    if (x == loss_neg_inf()) return; // a probability of 0
    if (x > o.m) {
        double f = exp(o.m - x); // 0 for the first term
        o.s = o.s * f + 1.0;
        o.a = o.a * f + d;
        o.m = x;
    } else {
        double e = exp(x - o.m); // NaN for a NaN x
        o.s += e;
        if (e != 0.0) o.a += e * d;
    }
}

// Merges two online sums (the same result whichever is first).
__device__ __forceinline__ OnlineLSE lse_merge(OnlineLSE x, OnlineLSE y) {
    double m = x.m > y.m ? x.m : y.m;
    double fx = x.s == 0.0 ? 0.0 : exp(x.m - m);
    double fy = y.s == 0.0 ? 0.0 : exp(y.m - m);
    OnlineLSE r;
    r.m = m;
    r.s = x.s * fx + y.s * fy;
    r.a = (fx == 0.0 ? 0.0 : x.a * fx) + (fy == 0.0 ? 0.0 : y.a * fy);
    return r;
}

__device__ __forceinline__ OnlineLSE lse_shfl_xor(OnlineLSE v, int o) {
    OnlineLSE r;
    r.m = __shfl_xor_sync(0xffffffffu, v.m, o);
    r.s = __shfl_xor_sync(0xffffffffu, v.s, o);
    r.a = __shfl_xor_sync(0xffffffffu, v.a, o);
    return r;
}

// The online sum of the whole block, in every thread (a fixed tree: lanes
// by xor butterfly, then the warps' results by warp 0). sh holds
// LOSS_WARPS entries.
__device__ OnlineLSE lse_block(OnlineLSE v, OnlineLSE* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = lse_merge(v, lse_shfl_xor(v, o));
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        OnlineLSE x = lane < LOSS_WARPS ? sh[lane] : lse_empty();
        for (int o = 16; o > 0; o >>= 1) x = lse_merge(x, lse_shfl_xor(x, o));
        if (lane == 0) sh[0] = x;
    }
    __syncthreads();
    OnlineLSE r = sh[0];
    __syncthreads();
    return r;
}

// Σ v over the block, in every thread (fixed tree). sh holds LOSS_WARPS
// doubles.
__device__ double sum_block_d(double v, double* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum_d(v);
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        double x = lane < LOSS_WARPS ? sh[lane] : 0.0;
        x = warp_sum_d(x);
        if (lane == 0) sh[0] = x;
    }
    __syncthreads();
    double r = sh[0];
    __syncthreads();
    return r;
}

// k_kl_rows: block i takes row rows[i] of student and teacher [.., vocab]
// and writes part[i] = KL(softmax(t/T) ‖ softmax(s/T)) of the row,
// computed as Σ p·(t − s)/T + lse(s/T) − lse(t/T) (Σ p = 1); when grad is
// not null it adds gscale·(q − p) into the row of grad.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS) k_kl_rows(double* part, float* grad, const float* student, const float* teacher,
                                                                    const int* rows, int vocab, double invT, double gscale) {
    __shared__ OnlineLSE sh[LOSS_WARPS];
    i64 base = (i64)rows[blockIdx.x] * vocab;
    const float* s = student + base;
    const float* t = teacher + base;
    OnlineLSE q = lse_empty(), p = lse_empty();
    for (int v = threadIdx.x; v < vocab; v += LOSS_THREADS) {
        double sv = (double)s[v] * invT, tv = (double)t[v] * invT;
        lse_add(q, sv, 0.0);
        lse_add(p, tv, tv - sv);
    }
    q = lse_block(q, sh);
    p = lse_block(p, sh);
    double lseS = q.m + log(q.s), lseT = p.m + log(p.s);
    if (threadIdx.x == 0) part[blockIdx.x] = p.a / p.s + lseS - lseT;
    if (!grad) return;
    float* g = grad + base;
    for (int v = threadIdx.x; v < vocab; v += LOSS_THREADS) {
        double qv = exp((double)s[v] * invT - lseS), pv = exp((double)t[v] * invT - lseT);
        g[v] = (float)((double)g[v] + gscale * (qv - pv));
    }
}

// k_ce_rows: block i takes row rows[i] of logits [.., vocab] and writes
// part[i] = lse(z) − z[targets[i]]; when grad is not null it adds
// gscale·(softmax(z) − onehot(target)) into the row of grad.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS) k_ce_rows(double* part, float* grad, const float* logits, const int* rows,
                                                                    const int* targets, int vocab, double gscale) {
    __shared__ OnlineLSE sh[LOSS_WARPS];
    i64 base = (i64)rows[blockIdx.x] * vocab;
    const float* z = logits + base;
    int target = targets[blockIdx.x];
    OnlineLSE o = lse_empty();
    for (int v = threadIdx.x; v < vocab; v += LOSS_THREADS) lse_add(o, (double)z[v], 0.0);
    o = lse_block(o, sh);
    double lse = o.m + log(o.s);
    if (threadIdx.x == 0) part[blockIdx.x] = lse - (double)z[target];
    if (!grad) return;
    float* g = grad + base;
    for (int v = threadIdx.x; v < vocab; v += LOSS_THREADS) {
        double d = exp((double)z[v] - lse);
        if (v == target) d -= 1.0;
        g[v] = (float)((double)g[v] + gscale * d);
    }
}

// k_sum_partials: out[0] = Σ part[0..n), one block: thread j adds part[j],
// part[j + LOSS_THREADS], … in order, then the block's fixed tree.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS) k_sum_partials(double* out, const double* part, int n) {
    __shared__ double sh[LOSS_WARPS];
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += LOSS_THREADS) acc += part[i];
    acc = sum_block_d(acc, sh);
    if (threadIdx.x == 0) out[0] = acc;
}

// k_sq_partials: part[block] = Σ (a − b)² (b null: Σ a²) over the block's
// grid-stride share of the n elements, in double.
extern "C" __global__ void __launch_bounds__(LOSS_THREADS) k_sq_partials(double* part, const float* a, const float* b, i64 n) {
    __shared__ double sh[LOSS_WARPS];
    double acc = 0.0;
    for (i64 i = (i64)blockIdx.x * LOSS_THREADS + threadIdx.x; i < n; i += (i64)gridDim.x * LOSS_THREADS) {
        double d = (double)a[i] - (b ? (double)b[i] : 0.0);
        acc += d * d;
    }
    acc = sum_block_d(acc, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// k_distance_grad: grad += w·scale·(s − t), scale from the sum of squares
// *ss by the form (0: 1/‖d‖, or 0 at zero distance; 1: 2; 2: 2/n).
extern "C" __global__ void k_distance_grad(float* grad, const float* s, const float* t, i64 n, const double* ss, int form, double w) {
    double scale;
    if (form == 0) {
        double norm = sqrt(*ss);
        scale = norm > 0.0 ? 1.0 / norm : 0.0;
    } else {
        scale = form == 1 ? 2.0 : 2.0 / (double)n;
    }
    double k = w * scale;
    if (k == 0.0) return;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        grad[i] = (float)((double)grad[i] + k * ((double)s[i] - (double)t[i]));
}

// k_adamw: one AdamW update of n elements with optim.AdamW's arithmetic,
// operation for operation in double with explicit rounding (no fused
// multiply-add), so the results equal the host optimiser's bit for bit:
//   g = f32(grad·scale); m = f32(β1·m + a1·g); v = f32(β2·v + a2·g·g);
//   θ = f32(θ·keep − stepSize·m / (√v / bc2Sqrt + eps)).
// shadow (may be null) receives bf16(θ).
extern "C" __global__ void k_adamw(float* param, const float* grad, float* m, float* v, bf16_t* shadow, i64 n, double b1, double a1, double b2,
                                   double a2, double stepSize, double bc2Sqrt, double eps, double keep, double scale) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        double g = (double)(float)__dmul_rn((double)grad[i], scale);
        float mi = (float)__dadd_rn(__dmul_rn(b1, (double)m[i]), __dmul_rn(a1, g));
        float vi = (float)__dadd_rn(__dmul_rn(b2, (double)v[i]), __dmul_rn(__dmul_rn(a2, g), g));
        m[i] = mi;
        v[i] = vi;
        double denom = __dadd_rn(__ddiv_rn(__dsqrt_rn((double)vi), bc2Sqrt), eps);
        float p = (float)__dsub_rn(__dmul_rn((double)param[i], keep), __ddiv_rn(__dmul_rn(stepSize, (double)mi), denom));
        param[i] = p;
        if (shadow) shadow[i] = f32_to_bf16(p);
    }
}
