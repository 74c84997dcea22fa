// Fake cuBLAS: column-major GEMM on the CPU (double accumulation) with the
// cuBLAS argument conventions.
#include <cstdint>
#include <cstring>
extern "C" {
int cublasCreate_v2(void** h) { *h = (void*)0x4; return 0; }
int cublasDestroy_v2(void*) { return 0; }
int cublasSetStream_v2(void*, void*) { return 0; }
int cublasGetVersion_v2(void*, int* v) { *v = 130000; return 0; }
int cublasGetProperty(int t, int* v) { *v = t == 0 ? 13 : 0; return 0; }
int cublasSetMathMode(void*, int) { return 0; }
const char* cublasGetStatusString(int) { return "emulated cuBLAS error"; }
static float ld(const void* p, int type, size_t i) {
    if (type == 14) { uint32_t u = (uint32_t)((const uint16_t*)p)[i] << 16; float f; memcpy(&f, &u, 4); return f; }
    return ((const float*)p)[i];
}
static int gemm(int ta, int tb, int m, int n, int k, const float* alpha, const void* A, int at, int lda, const void* B, int bt, int ldb,
                const float* beta, float* C, int ldc) {
    if (m < 0 || n < 0 || k < 0) return 7;
    if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m) return 7;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double acc = 0;
            for (int p = 0; p < k; p++) {
                double a = ta ? ld(A, at, (size_t)i * lda + p) : ld(A, at, (size_t)p * lda + i);
                double b = tb ? ld(B, bt, (size_t)p * ldb + j) : ld(B, bt, (size_t)j * ldb + p);
                acc += a * b;
            }
            float prev = *beta == 0 ? 0 : C[(size_t)j * ldc + i] * *beta;
            C[(size_t)j * ldc + i] = (float)(*alpha * acc) + prev;
        }
    return 0;
}
int cublasSgemm_v2(void*, int ta, int tb, int m, int n, int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                   const float* beta, float* C, int ldc) {
    return gemm(ta, tb, m, n, k, alpha, A, 0, lda, B, 0, ldb, beta, C, ldc);
}
int cublasGemmEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int at, int lda, const void* B, int bt, int ldb,
                 const void* beta, void* C, int ct, int ldc, int compute, int) {
    if (ct != 0 || compute != 68 || (at != 14 && at != 0) || at != bt) return 15;
    return gemm(ta, tb, m, n, k, (const float*)alpha, A, at, lda, B, bt, ldb, (const float*)beta, (float*)C, ldc);
}
// Strided-batched forms: batch independent products, operand i at
// pointer + i·stride elements.
int cublasSgemmStridedBatched(void*, int ta, int tb, int m, int n, int k, const float* alpha, const float* A, int lda, long long sa,
                              const float* B, int ldb, long long sb, const float* beta, float* C, int ldc, long long sc, int batch) {
    if (batch < 0) return 7;
    for (int i = 0; i < batch; i++) {
        int r = gemm(ta, tb, m, n, k, alpha, A + i * sa, 0, lda, B + i * sb, 0, ldb, beta, C + i * sc, ldc);
        if (r) return r;
    }
    return 0;
}
int cublasGemmStridedBatchedEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int at, int lda, long long sa,
                               const void* B, int bt, int ldb, long long sb, const void* beta, void* C, int ct, int ldc, long long sc,
                               int batch, int compute, int) {
    if (ct != 0 || compute != 68 || (at != 14 && at != 0) || at != bt) return 15;
    if (batch < 0) return 7;
    size_t es = at == 14 ? 2 : 4;
    for (int i = 0; i < batch; i++) {
        int r = gemm(ta, tb, m, n, k, (const float*)alpha, (const char*)A + i * sa * es, at, lda, (const char*)B + i * sb * es, bt, ldb,
                     (const float*)beta, (float*)C + i * sc, ldc);
        if (r) return r;
    }
    return 0;
}
}
