package cpu

import "golang.org/x/sys/cpu"

// On amd64 the tests also run every assembly micro-kernel the machine
// has, not only the one init picked.
func init() {
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		testMicroKernels["avx2+fma"] = microKernelAVX2
	}
	if cpu.X86.HasAVX512F {
		testMicroKernels["avx512"] = microKernelAVX512
	}
}
