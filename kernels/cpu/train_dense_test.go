package cpu

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

func TestDenseGradConformance(t *testing.T) {
	conformance.RunDenseGrad(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
}

// The suite on one worker, and on the portable matrix products (gonum's
// sgemm and the plain-Go micro-kernel), which MatMulAT and the attention
// backward call with a transposed a.
func TestDenseGradConformancePortable(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	t.Run("one-worker", func(t *testing.T) {
		conformance.RunDenseGrad(t, func() kernels.Backend { return New(1) }, conformance.DefaultTolerances())
	})
	savedGemm, savedKernel := gemm, microKernel
	t.Cleanup(func() { gemm, microKernel = savedGemm, savedKernel })
	t.Run("blocked-go", func(t *testing.T) {
		gemm, microKernel = gemmBlocked, microKernelGo
		conformance.RunDenseGrad(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
	})
	t.Run("gonum", func(t *testing.T) {
		gemm, microKernel = gemmGonum, savedKernel
		conformance.RunDenseGrad(t, func() kernels.Backend { return New(0) }, conformance.DefaultTolerances())
	})
}

// denseUp uploads fresh random values in [lo, hi) as dt.
func denseUp(t testing.TB, be *Backend, rng *rand.Rand, lo, hi float64, dt kernels.DType, shape ...int) kernels.Tensor {
	t.Helper()
	n := product(shape)
	host := make([]float32, n)
	for i := range host {
		host[i] = float32(lo + (hi-lo)*rng.Float64())
	}
	x, err := be.Upload(host, dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func denseDown(t testing.TB, be *Backend, x kernels.Tensor) []float32 {
	t.Helper()
	host, err := be.Download(x)
	if err != nil {
		t.Fatal(err)
	}
	return host
}

// Every DenseGrad operation gives bit-identical results on 1, 2, 3 and 7
// workers (the backend's promise: sums fixed by the shapes, not by the
// split of the work).
func TestDenseGradWorkerIndependence(t *testing.T) {
	saved := matmulATPanelFloats
	t.Cleanup(func() { matmulATPanelFloats = saved })
	matmulATPanelFloats = 1 // one gemmKC-row panel at a time: several panels below
	run := func(workers int) map[string][]float32 {
		be := New(workers)
		rng := rand.New(rand.NewPCG(5, 6))
		res := map[string][]float32{}
		up := func(lo, hi float64, dt kernels.DType, shape ...int) kernels.Tensor {
			return denseUp(t, be, rng, lo, hi, dt, shape...)
		}
		must := func(what string, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s (%d workers): %v", what, workers, err)
			}
		}
		a, b := up(-1, 1, kernels.BF16, 700, 130), up(-1, 1, kernels.F32, 700, 333)
		o := up(-1, 1, kernels.F32, 130, 333)
		must("matmulat bf16", be.MatMulAT(o, a, b, true))
		res["matmulat bf16"] = denseDown(t, be, o)
		a32 := up(-1, 1, kernels.F32, 700, 20)
		o2 := up(-1, 1, kernels.F32, 20, 333)
		must("matmulat f32", be.MatMulAT(o2, a32, b, false))
		res["matmulat f32"] = denseDown(t, be, o2)
		s := up(-1, 1, kernels.F32, 333)
		must("sumrows", be.SumRows(s, b, true))
		res["sumrows"] = denseDown(t, be, s)
		x, dy, w := up(2, 5, kernels.F32, 37, 256), up(-1, 1, kernels.F32, 37, 256), up(0.5, 1.5, kernels.F32, 256)
		dx := up(0, 1, kernels.F32, 37, 256)
		must("layernormbackward", be.LayerNormBackward(dx, dy, x, w, 1e-5))
		res["layernormbackward"] = denseDown(t, be, dx)
		q, k, v := up(-1, 1, kernels.F32, 2, 300, 6, 16), up(-1, 1, kernels.F32, 2, 300, 2, 16), up(-1, 1, kernels.F32, 2, 300, 2, 16)
		do, out := up(-1, 1, kernels.F32, 2, 300, 6, 16), up(-1, 1, kernels.F32, 2, 300, 6, 16)
		must("softmaxattention", be.SoftmaxAttention(out, q, k, v, 0.25, true))
		dq, dk, dv := up(0, 1, kernels.F32, 2, 300, 6, 16), up(0, 1, kernels.F32, 2, 300, 2, 16), up(0, 1, kernels.F32, 2, 300, 2, 16)
		must("softmaxattentionbackward", be.SoftmaxAttentionBackward(dq, dk, dv, do, q, k, v, out, 0.25, true))
		res["dq"], res["dk"], res["dv"] = denseDown(t, be, dq), denseDown(t, be, dk), denseDown(t, be, dv)
		sh := up(0, 1, kernels.F32, 2*300, 2*16)
		must("sumheads", be.SumHeads(sh, do, 2, 6, 16))
		res["sumheads"] = denseDown(t, be, sh)
		dr := up(0, 1, kernels.F32, 2, 300, 6, 16)
		must("dropout", be.Dropout(dr, do, 77, 0.1))
		res["dropout"] = denseDown(t, be, dr)
		return res
	}
	want := run(1)
	for _, workers := range []int{2, 3, 7} {
		got := run(workers)
		for op, w := range want {
			if !slices.Equal(got[op], w) {
				t.Errorf("%s: %d workers differ from one", op, workers)
			}
		}
	}
}

// MatMulAT with BF16 operands over many panels of k equals the reference
// on the bf16 values, and, with gemmBlocked, the F32 path on the widened
// values bit for bit (panels are whole gemmKC blocks).
func TestMatMulATPanels(t *testing.T) {
	saved := matmulATPanelFloats
	t.Cleanup(func() { matmulATPanelFloats = saved })
	matmulATPanelFloats = 1
	be := New(0)
	rng := rand.New(rand.NewPCG(7, 8))
	const k, m, n = 1000, 33, 70
	a := denseUp(t, be, rng, -1, 1, kernels.BF16, k, m)
	b := denseUp(t, be, rng, -1, 1, kernels.BF16, k, n)
	out := denseUp(t, be, rng, -1, 1, kernels.F32, m, n)
	prev := denseDown(t, be, out)
	if err := be.MatMulAT(out, a, b, true); err != nil {
		t.Fatal(err)
	}
	ah, bh := denseDown(t, be, a), denseDown(t, be, b)
	ar, _ := reference.FromFloat32(ah, k, m)
	br, _ := reference.FromFloat32(bh, k, n)
	want, err := reference.MatMulAT(ar, br)
	if err != nil {
		t.Fatal(err)
	}
	got := denseDown(t, be, out)
	var num, den float64
	for i, w := range want.Data {
		w += float64(prev[i])
		num += (float64(got[i]) - w) * (float64(got[i]) - w)
		den += w * w
	}
	if e := math.Sqrt(num / den); e > 1e-6 {
		t.Errorf("relative error %.3g over %d panels", e, (k+gemmKC-1)/gemmKC)
	}
	savedGemm := gemm
	t.Cleanup(func() { gemm = savedGemm })
	gemm = gemmBlocked
	a32, _ := be.Upload(ah, kernels.F32, k, m)
	b32, _ := be.Upload(bh, kernels.F32, k, n)
	o16, o32 := denseUp(t, be, rng, 0, 1, kernels.F32, m, n), denseUp(t, be, rng, 0, 1, kernels.F32, m, n)
	if err := be.MatMulAT(o16, a, b, false); err != nil {
		t.Fatal(err)
	}
	if err := be.MatMulAT(o32, a32, b32, false); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(denseDown(t, be, o16), denseDown(t, be, o32)) {
		t.Error("gemmBlocked: bf16 operands in panels differ from the f32 path on the same values")
	}
}

// Operands that alias the outputs they would overwrite mid-way are errors.
func TestDenseGradAliasing(t *testing.T) {
	be := New(2)
	rng := rand.New(rand.NewPCG(9, 10))
	a := denseUp(t, be, rng, -1, 1, kernels.F32, 8, 8)
	if err := be.MatMulAT(a, a, a, false); err == nil {
		t.Error("matmulat into an operand: no error")
	}
	if err := be.SumHeads(a, a, 1, 1, 64); err == nil {
		t.Error("sumheads in place: no error")
	}
	if err := be.SetCols(a, a, 0); err == nil {
		t.Error("setcols from itself: no error")
	}
	q := denseUp(t, be, rng, -1, 1, kernels.F32, 1, 4, 2, 8)
	k := denseUp(t, be, rng, -1, 1, kernels.F32, 1, 4, 2, 8)
	dq := denseUp(t, be, rng, -1, 1, kernels.F32, 1, 4, 2, 8)
	if err := be.SoftmaxAttentionBackward(q, k, dq, dq, q, k, k, q, 1, true); err == nil {
		t.Error("softmaxattentionbackward writing dq over q: no error")
	}
}

// BenchmarkMatMulAT: a Phi-2 dense (out_proj) weight gradient over 1024
// tokens, dW [2560, 2560] += dYᵀ·X (13.4 GFLOP), with X F32 or BF16.
func BenchmarkMatMulAT(b *testing.B) {
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		b.Run("x="+dt.String(), func(b *testing.B) {
			be := New(0)
			rng := rand.New(rand.NewPCG(1, 2))
			const k, m, n = 1024, 2560, 2560
			dy := denseUp(b, be, rng, -1, 1, kernels.F32, k, m)
			x := denseUp(b, be, rng, -1, 1, dt, k, n)
			dw := denseUp(b, be, rng, -1, 1, kernels.F32, m, n)
			clk := startCPU(b)
			for b.Loop() {
				if err := be.MatMulAT(dw, dy, x, true); err != nil {
					b.Fatal(err)
				}
			}
			flops := 2 * k * m * n * float64(b.N)
			b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			if used := processCPUTime() - clk.start; used > 0 {
				b.ReportMetric(flops/used.Seconds()/1e9, "GFLOP/cpu-s")
			}
		})
	}
}

// BenchmarkSoftmaxAttentionBackward: one Phi-2 layer's causal attention
// over 512 tokens (32 heads of 80), the backward and, for scale, the
// forward it differentiates.
func BenchmarkSoftmaxAttentionBackward(b *testing.B) {
	const l, H, p = 512, 32, 80
	scale := float32(1 / math.Sqrt(p))
	be := New(0)
	rng := rand.New(rand.NewPCG(3, 4))
	up := func() kernels.Tensor { return denseUp(b, be, rng, -1, 1, kernels.F32, 1, l, H, p) }
	q, k, v, do, out := up(), up(), up(), up(), up()
	dq, dk, dv := up(), up(), up()
	if err := be.SoftmaxAttention(out, q, k, v, scale, true); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"forward", func() error { return be.SoftmaxAttention(out, q, k, v, scale, true) }},
		{"backward", func() error { return be.SoftmaxAttentionBackward(dq, dk, dv, do, q, k, v, out, scale, true) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			clk := startCPU(b)
			for b.Loop() {
				if err := c.call(); err != nil {
					b.Fatal(err)
				}
			}
			reportTokens(b, l, clk)
		})
	}
}

// BenchmarkDropout: one Phi-2 residual branch over 512 tokens, p = 0.1
// (distill's host mask of the same size: BenchmarkDropMask).
func BenchmarkDropout(b *testing.B) {
	be := New(0)
	rng := rand.New(rand.NewPCG(5, 6))
	x := denseUp(b, be, rng, -1, 1, kernels.F32, 512, 2560)
	out := denseUp(b, be, rng, -1, 1, kernels.F32, 512, 2560)
	clk := startCPU(b)
	for b.Loop() {
		if err := be.Dropout(out, x, 42, 0.1); err != nil {
			b.Fatal(err)
		}
	}
	reportTokens(b, 512, clk)
}
