package cpu

import (
	"golang.org/x/sys/cpu"
)

// The assembly micro-kernels of gemm_amd64.s.
//
//go:noescape
func kernel6x16AVX2(kc int, a *float32, astride int, b *float32, bstride int, c *float32, ldc int, acc int)

//go:noescape
func kernel12x32AVX512(kc int, a *float32, b *float32, c *float32, ldc int, acc int)

func init() {
	switch {
	case cpu.X86.HasAVX512F:
		microKernel = microKernelAVX512
		microKernelName = "avx512"
		gemm = gemmBlocked
	case cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		microKernel = microKernelAVX2
		microKernelName = "avx2+fma"
		gemm = gemmBlocked
	}
}

func flag(b bool) int {
	if b {
		return 1
	}
	return 0
}

func microKernelAVX512(kc int, a, b, c []float32, ldc int, accumulate bool) {
	_ = a[gemmMR*kc-1]
	_ = b[gemmNR*kc-1]
	_ = c[(gemmMR-1)*ldc+gemmNR-1]
	kernel12x32AVX512(kc, &a[0], &b[0], &c[0], 4*ldc, flag(accumulate))
}

// microKernelAVX2 computes the 12×32 tile as four 6×16 quarters.
func microKernelAVX2(kc int, a, b, c []float32, ldc int, accumulate bool) {
	_ = a[gemmMR*kc-1]
	_ = b[gemmNR*kc-1]
	_ = c[(gemmMR-1)*ldc+gemmNR-1]
	const as, bs = gemmMR * 4, gemmNR * 4 // byte strides per k
	for _, q := range [4][2]int{{0, 0}, {0, 16}, {6, 0}, {6, 16}} {
		i, j := q[0], q[1]
		kernel6x16AVX2(kc, &a[i], as, &b[j], bs, &c[i*ldc+j], 4*ldc, flag(accumulate))
	}
}
