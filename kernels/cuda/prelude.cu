// prelude.cu: definitions shared by every kernel module. It is prepended to
// each module's source before NVRTC compiles it. No #include: NVRTC on the
// target machines finds no CUDA headers, so bf16 is handled by bit
// operations and the few PTX instructions used are written as inline asm.

typedef unsigned short bf16_t;
typedef long long i64;

// bf16 <-> float32. The conversion to bf16 rounds to nearest even and keeps
// NaN a quiet NaN, as the CPU backend and PyTorch do.
__device__ __forceinline__ float bf16_to_f32(bf16_t h) { return __uint_as_float(((unsigned)h) << 16); }

__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// Element i of a tensor that is float32 (bf == 0) or bf16 (bf != 0).
__device__ __forceinline__ float ld_elem(const void* p, int bf, i64 i) {
    return bf ? bf16_to_f32(((const bf16_t*)p)[i]) : ((const float*)p)[i];
}
__device__ __forceinline__ void st_elem(void* p, int bf, i64 i, float v) {
    if (bf) ((bf16_t*)p)[i] = f32_to_bf16(v);
    else ((float*)p)[i] = v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#ifndef MATSURGERY_EMU
extern __shared__ __align__(16) unsigned char dyn_smem[];

// Shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned a;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// Two floats to packed bf16 (round to nearest even): lo_elem in the low
// half, hi_elem in the high half.
__device__ __forceinline__ unsigned cvt_bf16x2(float lo_elem, float hi_elem) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi_elem), "f"(lo_elem));
    return r;
}

// D += A·B for one m16n8k16 tile, bf16 operands, float32 accumulators
// (PTX ISA, "Matrix Fragments for mma.m16n8k16").
__device__ __forceinline__ void mma_bf16_16816(float* d, const unsigned* a, const unsigned* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Transpose of an 8×8 matrix of 16-bit values held one row pair per lane
// (lane L: row L/4, columns 2(L%4) and 2(L%4)+1, low half first): an
// mma accumulator tile, packed to bf16, becomes the B fragment of its
// transpose.
__device__ __forceinline__ unsigned movm_trans(unsigned a) {
    unsigned r;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(r) : "r"(a));
    return r;
}

// 2^x in one instruction (relative error about 2^-22); results below the
// smallest normal float become 0.
__device__ __forceinline__ float ex2_ftz(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// 8-byte store of two floats (p 8-byte aligned).
__device__ __forceinline__ void st_global_f2(float* p, float a, float b) {
    asm volatile("st.global.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b) : "memory");
}

// ldmatrix: each lane passes the shared address of one 16-byte row.
__device__ __forceinline__ void ldsm_x4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_trans(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

// 16-byte asynchronous copy global -> shared (shared address dst); bytes <
// 16 zero-fills the rest (bytes == 0 writes 16 zero bytes, reads nothing).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most one (wait1) or no (wait0) committed group is pending.
__device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }
__device__ __forceinline__ void cp_async_wait0() { asm volatile("cp.async.wait_group 0;\n" ::); }
#endif

// The two bf16 halves of a packed register, as floats.
__device__ __forceinline__ float bf16_lo(unsigned r) { return __uint_as_float(r << 16); }
__device__ __forceinline__ float bf16_hi(unsigned r) { return __uint_as_float(r & 0xffff0000u); }

// hi + lo ≈ (v0, v1) packed: each float carried as two bf16 (about 16
// significant bits together).
__device__ __forceinline__ void split_bf16x2(float v0, float v1, unsigned& hi, unsigned& lo) {
    hi = cvt_bf16x2(v0, v1);
    lo = cvt_bf16x2(v0 - bf16_lo(hi), v1 - bf16_hi(hi));
}
