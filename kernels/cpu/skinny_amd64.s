#include "textflag.h"

// Dot products of the skinny MatMul path (skinny.go): four weight rows
// w0..w3 against one or two rows a0, a1 of the activations, over the first
// blocks·16 (AVX-512) or blocks·8 (AVX2) elements. Weight rows are float32
// or bf16 bits (widened exactly: zero-extend, shift left 16).
//
// Every output element out[i*4+r] = a_i·w_r is computed the same way in
// every kernel of one instruction set: one vector accumulator whose lane l
// sums, by FMA in increasing order, the products at indices ≡ l modulo the
// vector width; then a fixed tree folds the lanes (halves, quarters, …).
// So a result does not depend on which kernel, or which group of rows,
// produced it.
//
// Registers: CX blocks left, BX byte offset into the rows, R8..R11 the
// weight rows, SI, DI the activation rows, DX out. Accumulators Z0..Z7 /
// Y0..Y7 (a_i·w_r in register 4i+r), weights Z8..Z11, activations Z12,
// Z13, scratch X14.

// HSUM folds the 8 lanes of Y into lane 0 (fixed order) and stores it at
// off(DX).
#define HSUM(Y, X, off) \
	VEXTRACTF128 $1, Y, X14; \
	VADDPS       X14, X, X; \
	VPERMILPS    $0x4E, X, X14; \
	VADDPS       X14, X, X; \
	VPERMILPS    $0xB1, X, X14; \
	VADDPS       X14, X, X; \
	VMOVSS       X, off(DX)

// HSUM16 folds the 16 lanes of Z into lane 0 and stores it at off(DX).
#define HSUM16(Z, Y, X, off) \
	VEXTRACTF64X4 $1, Z, Y14; \
	VADDPS        Y14, Y, Y; \
	HSUM(Y, X, off)

#define ARGS \
	MOVQ blocks+0(FP), CX; \
	MOVQ w0+8(FP), R8; \
	MOVQ w1+16(FP), R9; \
	MOVQ w2+24(FP), R10; \
	MOVQ w3+32(FP), R11; \
	MOVQ a0+40(FP), SI; \
	MOVQ a1+48(FP), DI; \
	MOVQ out+56(FP), DX; \
	XORQ BX, BX

// Weight loads: float32 rows at offset BX, or bf16 rows at offset BX
// (activations then at 2·BX).
#define LOADW512F32(R, Z) VMOVUPS (R)(BX*1), Z
#define LOADW512BF16(R, Z) VPMOVZXWD (R)(BX*1), Z; VPSLLD $16, Z, Z
#define LOADW256F32(R, Y) VMOVUPS (R)(BX*1), Y
#define LOADW256BF16(R, Y) VPMOVZXWD (R)(BX*1), Y; VPSLLD $16, Y, Y

// func skinny2F32AVX512(blocks int, w0, w1, w2, w3, a0, a1 *float32, out *[8]float32)
TEXT ·skinny2F32AVX512(SB), NOSPLIT, $0-64
	ARGS
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	TESTQ  CX, CX
	JLE    done2f512

loop2f512:
	LOADW512F32(R8, Z8)
	LOADW512F32(R9, Z9)
	LOADW512F32(R10, Z10)
	LOADW512F32(R11, Z11)
	VMOVUPS     (SI)(BX*1), Z12
	VMOVUPS     (DI)(BX*1), Z13
	VFMADD231PS Z12, Z8, Z0
	VFMADD231PS Z12, Z9, Z1
	VFMADD231PS Z12, Z10, Z2
	VFMADD231PS Z12, Z11, Z3
	VFMADD231PS Z13, Z8, Z4
	VFMADD231PS Z13, Z9, Z5
	VFMADD231PS Z13, Z10, Z6
	VFMADD231PS Z13, Z11, Z7
	ADDQ        $64, BX
	DECQ        CX
	JNZ         loop2f512

done2f512:
	HSUM16(Z0, Y0, X0, 0)
	HSUM16(Z1, Y1, X1, 4)
	HSUM16(Z2, Y2, X2, 8)
	HSUM16(Z3, Y3, X3, 12)
	HSUM16(Z4, Y4, X4, 16)
	HSUM16(Z5, Y5, X5, 20)
	HSUM16(Z6, Y6, X6, 24)
	HSUM16(Z7, Y7, X7, 28)
	VZEROUPPER
	RET

// func skinny1F32AVX512(blocks int, w0, w1, w2, w3, a0, a1 *float32, out *[8]float32)
// (a1 unused; writes out[0:4])
TEXT ·skinny1F32AVX512(SB), NOSPLIT, $0-64
	ARGS
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	TESTQ  CX, CX
	JLE    done1f512

loop1f512:
	LOADW512F32(R8, Z8)
	LOADW512F32(R9, Z9)
	LOADW512F32(R10, Z10)
	LOADW512F32(R11, Z11)
	VMOVUPS     (SI)(BX*1), Z12
	VFMADD231PS Z12, Z8, Z0
	VFMADD231PS Z12, Z9, Z1
	VFMADD231PS Z12, Z10, Z2
	VFMADD231PS Z12, Z11, Z3
	ADDQ        $64, BX
	DECQ        CX
	JNZ         loop1f512

done1f512:
	HSUM16(Z0, Y0, X0, 0)
	HSUM16(Z1, Y1, X1, 4)
	HSUM16(Z2, Y2, X2, 8)
	HSUM16(Z3, Y3, X3, 12)
	VZEROUPPER
	RET

// func skinny2BF16AVX512(blocks int, w0, w1, w2, w3 *uint16, a0, a1 *float32, out *[8]float32)
TEXT ·skinny2BF16AVX512(SB), NOSPLIT, $0-64
	ARGS
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	TESTQ  CX, CX
	JLE    done2b512

loop2b512:
	LOADW512BF16(R8, Z8)
	LOADW512BF16(R9, Z9)
	LOADW512BF16(R10, Z10)
	LOADW512BF16(R11, Z11)
	VMOVUPS     (SI)(BX*2), Z12
	VMOVUPS     (DI)(BX*2), Z13
	VFMADD231PS Z12, Z8, Z0
	VFMADD231PS Z12, Z9, Z1
	VFMADD231PS Z12, Z10, Z2
	VFMADD231PS Z12, Z11, Z3
	VFMADD231PS Z13, Z8, Z4
	VFMADD231PS Z13, Z9, Z5
	VFMADD231PS Z13, Z10, Z6
	VFMADD231PS Z13, Z11, Z7
	ADDQ        $32, BX
	DECQ        CX
	JNZ         loop2b512

done2b512:
	HSUM16(Z0, Y0, X0, 0)
	HSUM16(Z1, Y1, X1, 4)
	HSUM16(Z2, Y2, X2, 8)
	HSUM16(Z3, Y3, X3, 12)
	HSUM16(Z4, Y4, X4, 16)
	HSUM16(Z5, Y5, X5, 20)
	HSUM16(Z6, Y6, X6, 24)
	HSUM16(Z7, Y7, X7, 28)
	VZEROUPPER
	RET

// func skinny1BF16AVX512(blocks int, w0, w1, w2, w3 *uint16, a0, a1 *float32, out *[8]float32)
TEXT ·skinny1BF16AVX512(SB), NOSPLIT, $0-64
	ARGS
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	TESTQ  CX, CX
	JLE    done1b512

loop1b512:
	LOADW512BF16(R8, Z8)
	LOADW512BF16(R9, Z9)
	LOADW512BF16(R10, Z10)
	LOADW512BF16(R11, Z11)
	VMOVUPS     (SI)(BX*2), Z12
	VFMADD231PS Z12, Z8, Z0
	VFMADD231PS Z12, Z9, Z1
	VFMADD231PS Z12, Z10, Z2
	VFMADD231PS Z12, Z11, Z3
	ADDQ        $32, BX
	DECQ        CX
	JNZ         loop1b512

done1b512:
	HSUM16(Z0, Y0, X0, 0)
	HSUM16(Z1, Y1, X1, 4)
	HSUM16(Z2, Y2, X2, 8)
	HSUM16(Z3, Y3, X3, 12)
	VZEROUPPER
	RET

// func skinny2F32AVX2(blocks int, w0, w1, w2, w3, a0, a1 *float32, out *[8]float32)
TEXT ·skinny2F32AVX2(SB), NOSPLIT, $0-64
	ARGS
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	TESTQ  CX, CX
	JLE    done2f256

loop2f256:
	LOADW256F32(R8, Y8)
	LOADW256F32(R9, Y9)
	LOADW256F32(R10, Y10)
	LOADW256F32(R11, Y11)
	VMOVUPS     (SI)(BX*1), Y12
	VMOVUPS     (DI)(BX*1), Y13
	VFMADD231PS Y12, Y8, Y0
	VFMADD231PS Y12, Y9, Y1
	VFMADD231PS Y12, Y10, Y2
	VFMADD231PS Y12, Y11, Y3
	VFMADD231PS Y13, Y8, Y4
	VFMADD231PS Y13, Y9, Y5
	VFMADD231PS Y13, Y10, Y6
	VFMADD231PS Y13, Y11, Y7
	ADDQ        $32, BX
	DECQ        CX
	JNZ         loop2f256

done2f256:
	HSUM(Y0, X0, 0)
	HSUM(Y1, X1, 4)
	HSUM(Y2, X2, 8)
	HSUM(Y3, X3, 12)
	HSUM(Y4, X4, 16)
	HSUM(Y5, X5, 20)
	HSUM(Y6, X6, 24)
	HSUM(Y7, X7, 28)
	VZEROUPPER
	RET

// func skinny1F32AVX2(blocks int, w0, w1, w2, w3, a0, a1 *float32, out *[8]float32)
TEXT ·skinny1F32AVX2(SB), NOSPLIT, $0-64
	ARGS
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	TESTQ  CX, CX
	JLE    done1f256

loop1f256:
	LOADW256F32(R8, Y8)
	LOADW256F32(R9, Y9)
	LOADW256F32(R10, Y10)
	LOADW256F32(R11, Y11)
	VMOVUPS     (SI)(BX*1), Y12
	VFMADD231PS Y12, Y8, Y0
	VFMADD231PS Y12, Y9, Y1
	VFMADD231PS Y12, Y10, Y2
	VFMADD231PS Y12, Y11, Y3
	ADDQ        $32, BX
	DECQ        CX
	JNZ         loop1f256

done1f256:
	HSUM(Y0, X0, 0)
	HSUM(Y1, X1, 4)
	HSUM(Y2, X2, 8)
	HSUM(Y3, X3, 12)
	VZEROUPPER
	RET

// func skinny2BF16AVX2(blocks int, w0, w1, w2, w3 *uint16, a0, a1 *float32, out *[8]float32)
TEXT ·skinny2BF16AVX2(SB), NOSPLIT, $0-64
	ARGS
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	TESTQ  CX, CX
	JLE    done2b256

loop2b256:
	LOADW256BF16(R8, Y8)
	LOADW256BF16(R9, Y9)
	LOADW256BF16(R10, Y10)
	LOADW256BF16(R11, Y11)
	VMOVUPS     (SI)(BX*2), Y12
	VMOVUPS     (DI)(BX*2), Y13
	VFMADD231PS Y12, Y8, Y0
	VFMADD231PS Y12, Y9, Y1
	VFMADD231PS Y12, Y10, Y2
	VFMADD231PS Y12, Y11, Y3
	VFMADD231PS Y13, Y8, Y4
	VFMADD231PS Y13, Y9, Y5
	VFMADD231PS Y13, Y10, Y6
	VFMADD231PS Y13, Y11, Y7
	ADDQ        $16, BX
	DECQ        CX
	JNZ         loop2b256

done2b256:
	HSUM(Y0, X0, 0)
	HSUM(Y1, X1, 4)
	HSUM(Y2, X2, 8)
	HSUM(Y3, X3, 12)
	HSUM(Y4, X4, 16)
	HSUM(Y5, X5, 20)
	HSUM(Y6, X6, 24)
	HSUM(Y7, X7, 28)
	VZEROUPPER
	RET

// func skinny1BF16AVX2(blocks int, w0, w1, w2, w3 *uint16, a0, a1 *float32, out *[8]float32)
TEXT ·skinny1BF16AVX2(SB), NOSPLIT, $0-64
	ARGS
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	TESTQ  CX, CX
	JLE    done1b256

loop1b256:
	LOADW256BF16(R8, Y8)
	LOADW256BF16(R9, Y9)
	LOADW256BF16(R10, Y10)
	LOADW256BF16(R11, Y11)
	VMOVUPS     (SI)(BX*2), Y12
	VFMADD231PS Y12, Y8, Y0
	VFMADD231PS Y12, Y9, Y1
	VFMADD231PS Y12, Y10, Y2
	VFMADD231PS Y12, Y11, Y3
	ADDQ        $16, BX
	DECQ        CX
	JNZ         loop1b256

done1b256:
	HSUM(Y0, X0, 0)
	HSUM(Y1, X1, 4)
	HSUM(Y2, X2, 8)
	HSUM(Y3, X3, 12)
	VZEROUPPER
	RET
