package cpu

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// testMicroKernels are the micro-kernels the tests and benchmarks run
// gemmBlocked with: the portable one, and on amd64 every assembly kernel
// this CPU supports (gemm_amd64_test.go).
var testMicroKernels = map[string]func(kc int, a, b, c []float32, ldc int, accumulate bool){
	"go": microKernelGo,
}

// blockedWith returns gemmBlocked running the given micro-kernel.
func blockedWith(k func(kc int, a, b, c []float32, ldc int, accumulate bool)) gemmFunc {
	return func(transA, transB bool, m, n, kk int, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
		saved := microKernel
		microKernel = k
		defer func() { microKernel = saved }()
		gemmBlocked(transA, transB, m, n, kk, a, lda, b, ldb, beta, c, ldc)
	}
}

func gemmCandidates() map[string]gemmFunc {
	c := map[string]gemmFunc{"gonum": gemmGonum}
	for name, k := range testMicroKernels {
		c["blocked/"+name] = blockedWith(k)
	}
	return c
}

func randF32(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(2*rng.Float64() - 1)
	}
	return s
}

// Both gemm kernels against a float64 triple loop, for every transpose
// combination, odd sizes, padded leading dimensions and beta 0 and 1.
func TestGemmKernels(t *testing.T) {
	kernels := gemmCandidates()
	rng := rand.New(rand.NewPCG(7, 8))
	for name, kern := range kernels {
		for _, sz := range [][3]int{{1, 1, 1}, {5, 7, 3}, {6, 16, 256}, {67, 130, 300}, {129, 5, 513}, {100, 1030, 20}} {
			m, n, k := sz[0], sz[1], sz[2]
			for _, tA := range []bool{false, true} {
				for _, tB := range []bool{false, true} {
					for _, beta := range []float32{0, 1} {
						lda, ldb, ldc := k+3, n+2, n+1
						if tA {
							lda = m + 3
						}
						if tB {
							ldb = k + 2
						}
						ra, rb := m, k
						if tA {
							ra = k
						}
						if tB {
							rb = n
						}
						a := randF32(rng, ra*lda)
						b := randF32(rng, rb*ldb)
						c := randF32(rng, m*ldc)
						want := make([]float64, m*n)
						for i := range m {
							for j := range n {
								s := float64(beta) * float64(c[i*ldc+j])
								for p := range k {
									var av, bv float32
									if tA {
										av = a[p*lda+i]
									} else {
										av = a[i*lda+p]
									}
									if tB {
										bv = b[j*ldb+p]
									} else {
										bv = b[p*ldb+j]
									}
									s += float64(av) * float64(bv)
								}
								want[i*n+j] = s
							}
						}
						kern(tA, tB, m, n, k, a, lda, b, ldb, beta, c, ldc)
						var num, den float64
						for i := range m {
							for j := range n {
								d := float64(c[i*ldc+j]) - want[i*n+j]
								num += d * d
								den += want[i*n+j] * want[i*n+j]
							}
						}
						if e := math.Sqrt(num / den); e > 1e-6 {
							t.Errorf("%s m=%d n=%d k=%d tA=%v tB=%v beta=%g: rel err %g", name, m, n, k, tA, tB, beta, e)
						}
					}
				}
			}
		}
	}
}

// BenchmarkGemm compares the two kernels at 1024×2560 · (2560×2560)ᵀ (the
// shape of a Phi-2 projection over 1024 tokens).
func BenchmarkGemm(b *testing.B) {
	const m, n, k = 1024, 2560, 2560
	rng := rand.New(rand.NewPCG(1, 1))
	a, w, c := randF32(rng, m*k), randF32(rng, n*k), make([]float32, m*n)
	cands := gemmCandidates()
	names := slices.Sorted(maps.Keys(cands))
	for _, name := range names {
		kc := struct {
			name string
			f    gemmFunc
		}{name, cands[name]}
		b.Run(fmt.Sprintf("%s/%dx%dx%d", kc.name, m, n, k), func(b *testing.B) {
			clk := startCPU(b)
			for b.Loop() {
				kc.f(false, true, m, n, k, a, k, w, k, 0, c, n)
			}
			flops := 2 * m * n * k * float64(b.N)
			b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			if used := processCPUTime() - clk.start; used > 0 {
				b.ReportMetric(flops/used.Seconds()/1e9, "GFLOP/cpu-s")
			}
		})
	}
}
