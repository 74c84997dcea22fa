package cpu

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// skinnyKernelSet is one implementation of the skinny dot products.
type skinnyKernelSet struct {
	f32  skinnyF32Func
	bf16 skinnyBF16Func
}

// testSkinnyKernels are the skinny kernels the tests run: the portable
// ones, and on amd64 every assembly set this CPU supports
// (skinny_amd64_test.go).
var testSkinnyKernels = map[string]skinnyKernelSet{
	"go": {skinnyF32Go, skinnyBF16Go},
}

// withSkinny runs fn with the given kernels in use on up to
// skinnyMaxRowsAsm rows, whatever the platform, restoring the active ones
// afterwards.
func withSkinny(set skinnyKernelSet, fn func()) {
	savedF, savedB, savedRows := skinnyF32, skinnyBF16, skinnyMaxRows
	defer func() { skinnyF32, skinnyBF16, skinnyMaxRows = savedF, savedB, savedRows }()
	skinnyF32, skinnyBF16, skinnyMaxRows = set.f32, set.bf16, skinnyMaxRowsAsm
	fn()
}

func randBF16(rng *rand.Rand, n int) []uint16 {
	s := make([]uint16, n)
	for i := range s {
		s[i] = roundBF16(float32(2*rng.Float64() - 1))
	}
	return s
}

// Each kernel against float64 dot products, for lengths around the vector
// widths and row counts around the group of four; and every product is
// the same bits whichever way it was computed (in a group or as a
// leftover row, alone or among other rows, with one activation row or
// two), which is what makes the path independent of how rows are split.
func TestSkinnyKernels(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	for _, name := range slices.Sorted(maps.Keys(testSkinnyKernels)) {
		set := testSkinnyKernels[name]
		for _, k := range []int{1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 645} {
			for _, rows := range []int{1, 2, 3, 4, 5, 7, 8, 9, 13} {
				wf, wb := randF32(rng, rows*k), randBF16(rng, rows*k)
				a0, a1 := randF32(rng, k), randF32(rng, k)
				for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
					run := func(w0, rows int, a0, a1 []float32, na int, out0, out1 []float32) {
						if dt == kernels.BF16 {
							set.bf16(wb[w0*k:(w0+rows)*k], k, a0, a1, na, out0, out1)
						} else {
							set.f32(wf[w0*k:(w0+rows)*k], k, a0, a1, na, out0, out1)
						}
					}
					weight := func(i int) float64 {
						if dt == kernels.BF16 {
							return float64(bf16Float(wb[i]))
						}
						return float64(wf[i])
					}
					two0, two1 := make([]float32, rows), make([]float32, rows)
					run(0, rows, a0, a1, 2, two0, two1)
					for i, ai := range [][]float32{a0, a1} {
						want := two0
						if i == 1 {
							want = two1
						}
						one, untouched := make([]float32, rows), []float32{float32(math.NaN())}
						run(0, rows, ai, nil, 1, one, untouched)
						if !math.IsNaN(float64(untouched[0])) {
							t.Errorf("%s %v k=%d rows=%d: one-row kernel wrote out1", name, dt, k, rows)
						}
						for r := range rows {
							var ref float64
							for p := range k {
								ref += float64(ai[p]) * weight(r*k+p)
							}
							// A float32 dot product of k terms of size ≤ 1.
							if d := math.Abs(float64(want[r]) - ref); d > 1e-6*float64(k) {
								t.Errorf("%s %v k=%d rows=%d: a%d·w%d = %g, want %g", name, dt, k, rows, i, r, want[r], ref)
							}
							alone := make([]float32, 1)
							run(r, 1, ai, nil, 1, alone, nil)
							if math.Float32bits(one[r]) != math.Float32bits(want[r]) || math.Float32bits(alone[0]) != math.Float32bits(want[r]) {
								t.Errorf("%s %v k=%d rows=%d: a%d·w%d differs: %g with two activation rows, %g with one, %g alone",
									name, dt, k, rows, i, r, want[r], one[r], alone[0])
							}
						}
					}
				}
			}
		}
	}
}

// skinnyCase is one MatMul on the skinny path's side of the crossover.
type skinnyCase struct {
	m, n, k int
	wdt     kernels.DType
}

func skinnyCases() []skinnyCase {
	var cs []skinnyCase
	for m := 1; m <= 9; m++ {
		for _, nk := range [][2]int{{1, 1}, {3, 17}, {37, 15}, {301, 129}, {130, 640}, {5, 1029}} {
			for _, wdt := range []kernels.DType{kernels.F32, kernels.BF16} {
				cs = append(cs, skinnyCase{m, nk[0], nk[1], wdt})
			}
		}
	}
	return cs
}

// runMatMul uploads a[m,k] (F32) and w (wdt, [n,k] when transB, else
// [k,n]), runs MatMul on be and returns the result.
func runMatMul(t *testing.T, be *Backend, a, w *reference.Array, wdt kernels.DType, transB bool) []float32 {
	t.Helper()
	at, err := be.Upload(a.Float32(), kernels.F32, a.Shape...)
	if err != nil {
		t.Fatal(err)
	}
	wt, err := be.Upload(w.Float32(), wdt, w.Shape...)
	if err != nil {
		t.Fatal(err)
	}
	n := w.Shape[0]
	if !transB {
		n = w.Shape[1]
	}
	nan := make([]float32, a.Shape[0]*n)
	for i := range nan {
		nan[i] = float32(math.NaN())
	}
	out, err := be.Upload(nan, kernels.F32, a.Shape[0], n)
	if err != nil {
		t.Fatal(err)
	}
	if err := be.MatMul(out, at, wt, transB); err != nil {
		t.Fatal(err)
	}
	got, err := be.Download(out)
	if err != nil {
		t.Fatal(err)
	}
	be.Free(at)
	be.Free(wt)
	be.Free(out)
	return got
}

func randArray(rng *rand.Rand, wdt kernels.DType, shape ...int) *reference.Array {
	a := reference.New(shape...)
	for i := range a.Data {
		a.Data[i] = float64(float32(2*rng.Float64() - 1))
	}
	if wdt == kernels.BF16 {
		return reference.RoundBF16(a)
	}
	return a
}

// MatMul through the skinny path (every kernel set) against the float64
// reference, m = 1…9, odd n and k, F32 and BF16 weights; with transB off
// the same shapes take the packed gemm and must agree as well.
func TestMatMulSkinny(t *testing.T) {
	tol := conformance.DefaultTolerances()
	rng := rand.New(rand.NewPCG(23, 24))
	be := New(3)
	for _, name := range slices.Sorted(maps.Keys(testSkinnyKernels)) {
		withSkinny(testSkinnyKernels[name], func() {
			for _, c := range skinnyCases() {
				a := randArray(rng, kernels.F32, c.m, c.k)
				for _, transB := range []bool{true, false} {
					w := randArray(rng, c.wdt, c.n, c.k)
					if !transB {
						w = randArray(rng, c.wdt, c.k, c.n)
					}
					want, err := reference.MatMul(a, w, transB)
					if err != nil {
						t.Fatal(err)
					}
					got := runMatMul(t, be, a, w, c.wdt, transB)
					g := make([]float64, len(got))
					for i, v := range got {
						g[i] = float64(v)
					}
					limit := tol.F32
					if c.wdt == kernels.BF16 {
						limit = tol.BF16
					}
					if e := conformance.RelErr(g, want.Data); e > limit {
						t.Errorf("%s m=%d n=%d k=%d weight %v transB=%v: relative error %.3g > %.3g", name, c.m, c.n, c.k, c.wdt, transB, e, limit)
					}
				}
			}
		})
	}
}

// The skinny path gives the same bits for any worker count (tasks start
// at different rows) and for any m (a row's result does not depend on
// the rows around it).
func TestMatMulSkinnyDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	const n, k = 1001, 333
	for _, name := range slices.Sorted(maps.Keys(testSkinnyKernels)) {
		withSkinny(testSkinnyKernels[name], func() {
			for _, wdt := range []kernels.DType{kernels.F32, kernels.BF16} {
				w := randArray(rng, wdt, n, k)
				a := randArray(rng, kernels.F32, 9, k)
				var first []float32
				for _, workers := range []int{1, 2, 3, 5, 8} {
					be := New(workers)
					got := runMatMul(t, be, a, w, wdt, true)
					if first == nil {
						first = got
						continue
					}
					if i := firstDiff(got, first); i >= 0 {
						t.Errorf("%s weight %v: %d workers differ from 1 at element %d: %g vs %g", name, wdt, workers, i, got[i], first[i])
					}
				}
				for m := 1; m < 9; m++ {
					am, err := reference.FromData(a.Data[:m*k], m, k)
					if err != nil {
						t.Fatal(err)
					}
					got := runMatMul(t, New(2), am, w, wdt, true)
					if i := firstDiff(got, first[:m*n]); i >= 0 {
						t.Errorf("%s weight %v: m=%d differs from m=9 at element %d: %g vs %g", name, wdt, m, i, got[i], first[i])
					}
				}
			}
		})
	}
}

// firstDiff is the first index where a and b differ in bits, or −1.
func firstDiff(a, b []float32) int {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

// BenchmarkMatMulSkinny: one token through a Phi-2 fc1 (2560→10240) and
// through a Phi-2 lm_head (2560→51200), F32 and BF16 weights, on the
// skinny path and on the packed gemm (skinnyMaxRows 0), in weight bytes
// per second; copy is a plain copy of as many bytes (read and written) for
// scale. The rows sweep (2560→2560, m = 1…32) locates the crossover.
func BenchmarkMatMulSkinny(b *testing.B) {
	type shape struct{ m, n, k int }
	var shapes []shape
	for _, nk := range [][2]int{{10240, phiModel}, {51200, phiModel}, {2560, 640}, {640, 2560}, {51200, 640}} {
		shapes = append(shapes, shape{1, nk[0], nk[1]})
	}
	for _, m := range []int{1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256} {
		shapes = append(shapes, shape{m, phiModel, phiModel})
	}
	for _, m := range []int{16, 32, 64, 96, 128, 192} {
		shapes = append(shapes, shape{m, phiModel, 4 * phiModel}, shape{m, 4 * phiModel, phiModel})
	}
	for _, s := range shapes {
		for _, wdt := range []kernels.DType{kernels.F32, kernels.BF16} {
			weightBytes := float64(s.n * s.k * wdt.Size())
			be := New(0)
			rng := rand.New(rand.NewPCG(27, 28))
			var a, w, out kernels.Tensor
			setup := func(b *testing.B) {
				if w == nil {
					a = uploadRand(b, be, rng, -1, 1, kernels.F32, s.m, s.k)
					w = uploadRand(b, be, rng, -0.02, 0.02, wdt, s.n, s.k)
					out = uploadRand(b, be, rng, 0, 0, kernels.F32, s.m, s.n)
				}
			}
			for _, path := range []string{"skinny", "packed"} {
				b.Run(fmt.Sprintf("%dx%dx%d/weight=%v/%s", s.m, s.k, s.n, wdt, path), func(b *testing.B) {
					setup(b)
					saved := skinnyMaxRows
					defer func() { skinnyMaxRows = saved }()
					if path == "packed" {
						skinnyMaxRows = 0
					} else {
						skinnyMaxRows = s.m
					}
					clk := startCPU(b)
					for b.Loop() {
						if err := be.MatMul(out, a, w, true); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(weightBytes*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
					flops := 2 * float64(s.m*s.n*s.k) * float64(b.N)
					b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
					if used := processCPUTime() - clk.start; used > 0 {
						b.ReportMetric(flops/used.Seconds()/1e9, "GFLOP/cpu-s")
					}
				})
			}
			if s.m == 1 {
				b.Run(fmt.Sprintf("%dx%dx%d/weight=%v/copy", s.m, s.k, s.n, wdt), func(b *testing.B) {
					src := make([]byte, int(weightBytes))
					dst := make([]byte, len(src))
					for i := range src {
						src[i] = byte(i)
					}
					copy(dst, src) // fault the pages in
					b.ResetTimer()
					for b.Loop() {
						copy(dst, src)
					}
					b.ReportMetric(weightBytes*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
				})
			}
			be.Free(a)
			be.Free(w)
			be.Free(out)
		}
	}
}
