package cpu

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// The assembly micro-kernels of gemm_amd64.s.
//
//go:noescape
func kernel6x16AVX2(kc int, a *float32, astride int, b *float32, bstride int, tile *float32, ldt int)

//go:noescape
func kernel12x32AVX512(kc int, a *float32, b *float32, tile *[gemmMR * gemmNR]float32)

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

func microKernelAVX512(kc int, a, b []float32, tile *[gemmMR * gemmNR]float32) {
	_ = a[gemmMR*kc-1]
	_ = b[gemmNR*kc-1]
	kernel12x32AVX512(kc, &a[0], &b[0], tile)
}

// microKernelAVX2 computes the 12×32 tile as four 6×16 quarters.
func microKernelAVX2(kc int, a, b []float32, tile *[gemmMR * gemmNR]float32) {
	_ = a[gemmMR*kc-1]
	_ = b[gemmNR*kc-1]
	const as, bs, ldt = gemmMR * 4, gemmNR * 4, gemmNR * 4 // byte strides
	for _, q := range [4][2]int{{0, 0}, {0, 16}, {6, 0}, {6, 16}} {
		i, j := q[0], q[1]
		kernel6x16AVX2(kc, &a[i], as, &b[j], bs, (*float32)(unsafe.Pointer(&tile[i*gemmNR+j])), ldt)
	}
}
