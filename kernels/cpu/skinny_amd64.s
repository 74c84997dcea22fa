#include "textflag.h"

// Dot products of the skinny MatMul path (skinny.go). Each kernel takes
// groups of four consecutive weight rows (row stride ldw bytes; ldw 0
// repeats one row) against one (skinnyRows1…) or two (skinnyRows2…)
// activation rows, over the first blocks·16 (AVX-512) or blocks·8 (AVX2)
// elements, and writes a_i·w_r to out_i[4g+r]. Weight rows are float32 or
// bf16 bits (widened exactly: zero-extend, shift left 16). blocks and
// groups must be ≥ 1.
//
// Every product is computed the same way in every kernel of one
// instruction set: one vector accumulator whose lane l sums, by FMA in
// increasing order, the products at indices ≡ l modulo the vector width;
// then a fixed tree folds the lanes (halves, quarters, …). So a result
// does not depend on which kernel, or which group of rows, produced it.
//
// Registers: R13 groups left, R8..R11 the group's weight rows, R12 ldw,
// CX blocks left, BX byte offset into the weight rows (into the
// activation rows: BX for float32 weights, 2·BX for bf16), SI, DI the
// activation rows, DX, AX the outputs. Accumulators Z0..Z7 / Y0..Y7
// (a_i·w_r in register 4i+r), weights Z8..Z11, activations Z12, Z13,
// scratch X14.

// HSUM folds the 8 lanes of Y into lane 0 (fixed order) and stores it at
// dst.
#define HSUM(Y, X, dst) \
	VEXTRACTF128 $1, Y, X14; \
	VADDPS       X14, X, X; \
	VPERMILPS    $0x4E, X, X14; \
	VADDPS       X14, X, X; \
	VPERMILPS    $0xB1, X, X14; \
	VADDPS       X14, X, X; \
	VMOVSS       X, dst

// HSUM16 folds the 16 lanes of Z into lane 0 and stores it at dst.
#define HSUM16(Z, Y, X, dst) \
	VEXTRACTF64X4 $1, Z, Y14; \
	VADDPS        Y14, Y, Y; \
	HSUM(Y, X, dst)

// The four weight rows of the group at R8.
#define ROWS \
	LEAQ (R8)(R12*1), R9; \
	LEAQ (R9)(R12*1), R10; \
	LEAQ (R10)(R12*1), R11

// Weight loads at offset BX: float32, or bf16 widened.
#define LOADF32(R, V) VMOVUPS (R)(BX*1), V
#define LOADBF16(R, V) VPMOVZXWD (R)(BX*1), V; VPSLLD $16, V, V

// func skinnyRows1F32AVX512(blocks, groups int, w *float32, ldw int, a0, out0 *float32)
TEXT ·skinnyRows1F32AVX512(SB), NOSPLIT, $0-48
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), R8
	MOVQ ldw+24(FP), R12
	MOVQ a0+32(FP), SI
	MOVQ out0+40(FP), DX

group1f32512:
	ROWS
	MOVQ blocks+0(FP), CX
	XORQ BX, BX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3

	PCALIGN $32
loop1f32512:
	LOADF32(R8, Z8)
	LOADF32(R9, Z9)
	LOADF32(R10, Z10)
	LOADF32(R11, Z11)
	VMOVUPS     (SI)(BX*1), Z12
	VFMADD231PS Z12, Z8, Z0
	VFMADD231PS Z12, Z9, Z1
	VFMADD231PS Z12, Z10, Z2
	VFMADD231PS Z12, Z11, Z3
	ADDQ        $64, BX
	DECQ        CX
	JNZ         loop1f32512

	HSUM16(Z0, Y0, X0, 0(DX))
	HSUM16(Z1, Y1, X1, 4(DX))
	HSUM16(Z2, Y2, X2, 8(DX))
	HSUM16(Z3, Y3, X3, 12(DX))
	LEAQ (R11)(R12*1), R8
	ADDQ $16, DX
	DECQ R13
	JNZ  group1f32512
	VZEROUPPER
	RET

// func skinnyRows2F32AVX512(blocks, groups int, w *float32, ldw int, a0, a1, out0, out1 *float32)
TEXT ·skinnyRows2F32AVX512(SB), NOSPLIT, $0-64
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), R8
	MOVQ ldw+24(FP), R12
	MOVQ a0+32(FP), SI
	MOVQ a1+40(FP), DI
	MOVQ out0+48(FP), DX
	MOVQ out1+56(FP), AX

group2f32512:
	ROWS
	MOVQ blocks+0(FP), CX
	XORQ BX, BX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7

	PCALIGN $32
loop2f32512:
	LOADF32(R8, Z8)
	LOADF32(R9, Z9)
	LOADF32(R10, Z10)
	LOADF32(R11, Z11)
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
	JNZ         loop2f32512

	HSUM16(Z0, Y0, X0, 0(DX))
	HSUM16(Z1, Y1, X1, 4(DX))
	HSUM16(Z2, Y2, X2, 8(DX))
	HSUM16(Z3, Y3, X3, 12(DX))
	HSUM16(Z4, Y4, X4, 0(AX))
	HSUM16(Z5, Y5, X5, 4(AX))
	HSUM16(Z6, Y6, X6, 8(AX))
	HSUM16(Z7, Y7, X7, 12(AX))
	LEAQ (R11)(R12*1), R8
	ADDQ $16, DX
	ADDQ $16, AX
	DECQ R13
	JNZ  group2f32512
	VZEROUPPER
	RET

// func skinnyRows1BF16AVX512(blocks, groups int, w *uint16, ldw int, a0, out0 *float32)
TEXT ·skinnyRows1BF16AVX512(SB), NOSPLIT, $0-48
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), R8
	MOVQ ldw+24(FP), R12
	MOVQ a0+32(FP), SI
	MOVQ out0+40(FP), DX

group1bf16512:
	ROWS
	MOVQ blocks+0(FP), CX
	XORQ BX, BX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3

	PCALIGN $32
loop1bf16512:
	LOADBF16(R8, Z8)
	LOADBF16(R9, Z9)
	LOADBF16(R10, Z10)
	LOADBF16(R11, Z11)
	VMOVUPS     (SI)(BX*2), Z12
	VFMADD231PS Z12, Z8, Z0
	VFMADD231PS Z12, Z9, Z1
	VFMADD231PS Z12, Z10, Z2
	VFMADD231PS Z12, Z11, Z3
	ADDQ        $32, BX
	DECQ        CX
	JNZ         loop1bf16512

	HSUM16(Z0, Y0, X0, 0(DX))
	HSUM16(Z1, Y1, X1, 4(DX))
	HSUM16(Z2, Y2, X2, 8(DX))
	HSUM16(Z3, Y3, X3, 12(DX))
	LEAQ (R11)(R12*1), R8
	ADDQ $16, DX
	DECQ R13
	JNZ  group1bf16512
	VZEROUPPER
	RET

// func skinnyRows2BF16AVX512(blocks, groups int, w *uint16, ldw int, a0, a1, out0, out1 *float32)
TEXT ·skinnyRows2BF16AVX512(SB), NOSPLIT, $0-64
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), R8
	MOVQ ldw+24(FP), R12
	MOVQ a0+32(FP), SI
	MOVQ a1+40(FP), DI
	MOVQ out0+48(FP), DX
	MOVQ out1+56(FP), AX

group2bf16512:
	ROWS
	MOVQ blocks+0(FP), CX
	XORQ BX, BX
	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7

	PCALIGN $32
loop2bf16512:
	LOADBF16(R8, Z8)
	LOADBF16(R9, Z9)
	LOADBF16(R10, Z10)
	LOADBF16(R11, Z11)
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
	JNZ         loop2bf16512

	HSUM16(Z0, Y0, X0, 0(DX))
	HSUM16(Z1, Y1, X1, 4(DX))
	HSUM16(Z2, Y2, X2, 8(DX))
	HSUM16(Z3, Y3, X3, 12(DX))
	HSUM16(Z4, Y4, X4, 0(AX))
	HSUM16(Z5, Y5, X5, 4(AX))
	HSUM16(Z6, Y6, X6, 8(AX))
	HSUM16(Z7, Y7, X7, 12(AX))
	LEAQ (R11)(R12*1), R8
	ADDQ $16, DX
	ADDQ $16, AX
	DECQ R13
	JNZ  group2bf16512
	VZEROUPPER
	RET

// func skinnyRows1F32AVX2(blocks, groups int, w *float32, ldw int, a0, out0 *float32)
TEXT ·skinnyRows1F32AVX2(SB), NOSPLIT, $0-48
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), R8
	MOVQ ldw+24(FP), R12
	MOVQ a0+32(FP), SI
	MOVQ out0+40(FP), DX

group1f32256:
	ROWS
	MOVQ blocks+0(FP), CX
	XORQ BX, BX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3

	PCALIGN $32
loop1f32256:
	LOADF32(R8, Y8)
	LOADF32(R9, Y9)
	LOADF32(R10, Y10)
	LOADF32(R11, Y11)
	VMOVUPS     (SI)(BX*1), Y12
	VFMADD231PS Y12, Y8, Y0
	VFMADD231PS Y12, Y9, Y1
	VFMADD231PS Y12, Y10, Y2
	VFMADD231PS Y12, Y11, Y3
	ADDQ        $32, BX
	DECQ        CX
	JNZ         loop1f32256

	HSUM(Y0, X0, 0(DX))
	HSUM(Y1, X1, 4(DX))
	HSUM(Y2, X2, 8(DX))
	HSUM(Y3, X3, 12(DX))
	LEAQ (R11)(R12*1), R8
	ADDQ $16, DX
	DECQ R13
	JNZ  group1f32256
	VZEROUPPER
	RET

// func skinnyRows2F32AVX2(blocks, groups int, w *float32, ldw int, a0, a1, out0, out1 *float32)
TEXT ·skinnyRows2F32AVX2(SB), NOSPLIT, $0-64
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), R8
	MOVQ ldw+24(FP), R12
	MOVQ a0+32(FP), SI
	MOVQ a1+40(FP), DI
	MOVQ out0+48(FP), DX
	MOVQ out1+56(FP), AX

group2f32256:
	ROWS
	MOVQ blocks+0(FP), CX
	XORQ BX, BX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7

	PCALIGN $32
loop2f32256:
	LOADF32(R8, Y8)
	LOADF32(R9, Y9)
	LOADF32(R10, Y10)
	LOADF32(R11, Y11)
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
	JNZ         loop2f32256

	HSUM(Y0, X0, 0(DX))
	HSUM(Y1, X1, 4(DX))
	HSUM(Y2, X2, 8(DX))
	HSUM(Y3, X3, 12(DX))
	HSUM(Y4, X4, 0(AX))
	HSUM(Y5, X5, 4(AX))
	HSUM(Y6, X6, 8(AX))
	HSUM(Y7, X7, 12(AX))
	LEAQ (R11)(R12*1), R8
	ADDQ $16, DX
	ADDQ $16, AX
	DECQ R13
	JNZ  group2f32256
	VZEROUPPER
	RET

// func skinnyRows1BF16AVX2(blocks, groups int, w *uint16, ldw int, a0, out0 *float32)
TEXT ·skinnyRows1BF16AVX2(SB), NOSPLIT, $0-48
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), R8
	MOVQ ldw+24(FP), R12
	MOVQ a0+32(FP), SI
	MOVQ out0+40(FP), DX

group1bf16256:
	ROWS
	MOVQ blocks+0(FP), CX
	XORQ BX, BX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3

	PCALIGN $32
loop1bf16256:
	LOADBF16(R8, Y8)
	LOADBF16(R9, Y9)
	LOADBF16(R10, Y10)
	LOADBF16(R11, Y11)
	VMOVUPS     (SI)(BX*2), Y12
	VFMADD231PS Y12, Y8, Y0
	VFMADD231PS Y12, Y9, Y1
	VFMADD231PS Y12, Y10, Y2
	VFMADD231PS Y12, Y11, Y3
	ADDQ        $16, BX
	DECQ        CX
	JNZ         loop1bf16256

	HSUM(Y0, X0, 0(DX))
	HSUM(Y1, X1, 4(DX))
	HSUM(Y2, X2, 8(DX))
	HSUM(Y3, X3, 12(DX))
	LEAQ (R11)(R12*1), R8
	ADDQ $16, DX
	DECQ R13
	JNZ  group1bf16256
	VZEROUPPER
	RET

// func skinnyRows2BF16AVX2(blocks, groups int, w *uint16, ldw int, a0, a1, out0, out1 *float32)
TEXT ·skinnyRows2BF16AVX2(SB), NOSPLIT, $0-64
	MOVQ groups+8(FP), R13
	MOVQ w+16(FP), R8
	MOVQ ldw+24(FP), R12
	MOVQ a0+32(FP), SI
	MOVQ a1+40(FP), DI
	MOVQ out0+48(FP), DX
	MOVQ out1+56(FP), AX

group2bf16256:
	ROWS
	MOVQ blocks+0(FP), CX
	XORQ BX, BX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7

	PCALIGN $32
loop2bf16256:
	LOADBF16(R8, Y8)
	LOADBF16(R9, Y9)
	LOADBF16(R10, Y10)
	LOADBF16(R11, Y11)
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
	JNZ         loop2bf16256

	HSUM(Y0, X0, 0(DX))
	HSUM(Y1, X1, 4(DX))
	HSUM(Y2, X2, 8(DX))
	HSUM(Y3, X3, 12(DX))
	HSUM(Y4, X4, 0(AX))
	HSUM(Y5, X5, 4(AX))
	HSUM(Y6, X6, 8(AX))
	HSUM(Y7, X7, 12(AX))
	LEAQ (R11)(R12*1), R8
	ADDQ $16, DX
	ADDQ $16, AX
	DECQ R13
	JNZ  group2bf16256
	VZEROUPPER
	RET
