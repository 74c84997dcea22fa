#include "textflag.h"

// func ssdTokenAVX2(S, x, b, c, y *float32, P, N int, decay, dt, dh float32)
//
// One token of one head of the Mamba-2 recurrence on a P×N float32 state:
// for each row p, S[p,:] = decay·S[p,:] + (dt·x[p])·b and
// y[p] = S[p,:]·c + dh·x[p]. The dot product keeps 8 partial sums over
// the multiple-of-8 part, then adds the tail in order.
TEXT ·ssdTokenAVX2(SB), NOSPLIT, $0-68
	MOVQ         S+0(FP), DI
	MOVQ         x+8(FP), R8
	MOVQ         b+16(FP), R9
	MOVQ         c+24(FP), R10
	MOVQ         y+32(FP), R11
	MOVQ         P+40(FP), R12
	MOVQ         N+48(FP), R13
	VBROADCASTSS decay+56(FP), Y1
	VMOVSS       dt+60(FP), X7
	VMOVSS       dh+64(FP), X8

rows:
	TESTQ        R12, R12
	JEQ          end
	VMOVSS       (R8), X9
	VMULSS       X7, X9, X10
	VBROADCASTSS X10, Y2
	VXORPS       Y0, Y0, Y0
	MOVQ         R9, SI
	MOVQ         R10, DX
	MOVQ         R13, CX

vec:
	CMPQ        CX, $8
	JLT         reduce
	VMOVUPS     (DI), Y3
	VMULPS      Y1, Y3, Y3
	VFMADD231PS (SI), Y2, Y3
	VMOVUPS     Y3, (DI)
	VFMADD231PS (DX), Y3, Y0
	ADDQ        $32, DI
	ADDQ        $32, SI
	ADDQ        $32, DX
	SUBQ        $8, CX
	JMP         vec

reduce:
	VEXTRACTF128 $1, Y0, X6
	VADDPS       X6, X0, X0
	VHADDPS      X0, X0, X0
	VHADDPS      X0, X0, X0

tail:
	TESTQ       CX, CX
	JEQ         rowdone
	VMOVSS      (DI), X3
	VMULSS      X1, X3, X3
	VMOVSS      (SI), X4
	VFMADD231SS X4, X10, X3
	VMOVSS      X3, (DI)
	VMOVSS      (DX), X5
	VFMADD231SS X5, X3, X0
	ADDQ        $4, DI
	ADDQ        $4, SI
	ADDQ        $4, DX
	DECQ        CX
	JMP         tail

rowdone:
	VFMADD231SS X9, X8, X0
	VMOVSS      X0, (R11)
	ADDQ        $4, R8
	ADDQ        $4, R11
	DECQ        R12
	JMP         rows

end:
	VZEROUPPER
	RET
