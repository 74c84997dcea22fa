package cpu

import "golang.org/x/sys/cpu"

// On amd64 the skinny tests also run every assembly kernel set the
// machine has, not only the one init picked.
func init() {
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		testSkinnyKernels["avx2+fma"] = skinnyKernelSet{skinnyF32AVX2, skinnyBF16AVX2}
	}
	if cpu.X86.HasAVX512F {
		testSkinnyKernels["avx512"] = skinnyKernelSet{skinnyF32AVX512, skinnyBF16AVX512}
	}
}
