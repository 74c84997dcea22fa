#include "textflag.h"

// func ssdRowAVX2(row, b, c *float32, n int, decay, xp float32) float32
//
// One row of the Mamba-2 state: row[i] = decay·row[i] + xp·b[i] for i < n,
// returning Σ row[i]·c[i] (8 partial sums, then the tail in order).
TEXT ·ssdRowAVX2(SB), NOSPLIT, $0-44
	MOVQ         row+0(FP), DI
	MOVQ         b+8(FP), SI
	MOVQ         c+16(FP), DX
	MOVQ         n+24(FP), CX
	VBROADCASTSS decay+32(FP), Y1
	VBROADCASTSS xp+36(FP), Y2
	VXORPS       Y0, Y0, Y0

loop8:
	CMPQ        CX, $8
	JLT         reduce
	VMOVUPS     (DI), Y3
	VMULPS      Y1, Y3, Y3
	VMOVUPS     (SI), Y4
	VFMADD231PS Y4, Y2, Y3
	VMOVUPS     Y3, (DI)
	VMOVUPS     (DX), Y5
	VFMADD231PS Y5, Y3, Y0
	ADDQ        $32, DI
	ADDQ        $32, SI
	ADDQ        $32, DX
	SUBQ        $8, CX
	JMP         loop8

reduce:
	VEXTRACTF128 $1, Y0, X6
	VADDPS       X6, X0, X0
	VHADDPS      X0, X0, X0
	VHADDPS      X0, X0, X0

tail:
	TESTQ       CX, CX
	JEQ         done
	VMOVSS      (DI), X3
	VMULSS      X1, X3, X3
	VMOVSS      (SI), X4
	VFMADD231SS X4, X2, X3
	VMOVSS      X3, (DI)
	VMOVSS      (DX), X5
	VFMADD231SS X5, X3, X0
	ADDQ        $4, DI
	ADDQ        $4, SI
	ADDQ        $4, DX
	DECQ        CX
	JMP         tail

done:
	VMOVSS     X0, ret+40(FP)
	VZEROUPPER
	RET
