package cpu

import "golang.org/x/sys/cpu"

// kernel6x16AVX2 is the AVX2/FMA micro-kernel (gemm_amd64.s).
//
//go:noescape
func kernel6x16AVX2(kc int, a *float32, b *float32, tile *[gemmMR * gemmNR]float32)

func init() {
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		microKernel = func(kc int, a, b []float32, tile *[gemmMR * gemmNR]float32) {
			_ = a[gemmMR*kc-1]
			_ = b[gemmNR*kc-1]
			kernel6x16AVX2(kc, &a[0], &b[0], tile)
		}
		microKernelName = "avx2+fma"
		gemm = gemmBlocked
	}
}
