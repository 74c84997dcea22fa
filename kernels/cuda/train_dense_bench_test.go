package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
)

// Benchmarks of the dense training operations at the distillation's
// sizes (TinyLLaVA-Phi-2: hidden 2560, MLP 10240, 32 heads of 80, a
// sequence of 1428 tokens). -cuda.small shrinks them for the emulator.

// attnScores is the number of (query, key) pairs of causal or full
// attention over l tokens, per head.
func attnScores(l int, causal bool) float64 {
	if causal {
		return float64(l) * float64(l+1) / 2
	}
	return float64(l) * float64(l)
}

// BenchmarkSoftmaxAttentionBackward: one sequence, 32 heads of 80, causal,
// f32 and bf16 q/k/v, at the chosen block of query rows and at fixed ones.
// TFLOP/s counts the five products over the unmasked scores only
// (10·p·scores a head).
func BenchmarkSoftmaxAttentionBackward(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(31, 32))
	h, p := 32, 80
	ls := []int{1428, 4096}
	if *benchSmall {
		h, ls = 2, []int{200}
	}
	saved := attnBlockRows
	defer func() { attnBlockRows = saved }()
	for _, l := range ls {
		for _, dt := range []kernels.DType{kernels.BF16, kernels.F32} {
			q := randomTensor(b, be, rng, dt, -1, 1, 1, l, h, p)
			k := randomTensor(b, be, rng, dt, -1, 1, 1, l, h, p)
			v := randomTensor(b, be, rng, dt, -1, 1, 1, l, h, p)
			out := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
			dout := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
			dq := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
			dk := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
			dv := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
			seen := map[int]bool{}
			for _, rows := range []int{0, 128, 256, 512} {
				bytes := 8
				if dt == kernels.BF16 {
					bytes = 12
				}
				attnBlockRows = rows
				actual := attnRows(l, h, bytes)
				if seen[actual] && rows != 0 {
					continue // capped by the scratch: the same block as another run
				}
				seen[actual] = true
				name := fmt.Sprintf("l=%d/%v/rows=%d", l, dt, actual)
				if rows == 0 {
					name += "(chosen)"
				}
				b.Run(name, func(b *testing.B) {
					attnBlockRows = rows
					ms := measure(b, be, 0, func() error {
						return be.SoftmaxAttentionBackward(dq, dk, dv, dout, q, k, v, out, float32(1/math.Sqrt(float64(p))), true)
					})
					b.ReportMetric(10*float64(h*p)*attnScores(l, true)/(ms*1e-3)/1e12, "TFLOP/s")
				})
			}
			if dt == kernels.BF16 {
				// The bf16 products against the f32 ones on the same
				// (bf16-valued) inputs: the cost of rounding dout, P and dS.
				attnBlockRows = 0
				rel := attnBF16Deviation(b, be, dq, dk, dv, dout, q, k, v, out, float32(1/math.Sqrt(float64(p))))
				b.Logf("l=%d: bf16 products vs f32 products on the same inputs: relative difference dq %.3g, dk %.3g, dv %.3g", l, rel[0], rel[1], rel[2])
			}
		}
	}
}

// attnBF16Deviation runs the backward on bf16 q, k, v and on their f32
// copies and returns the relative differences of dq, dk and dv.
func attnBF16Deviation(b *testing.B, be *Backend, dq, dk, dv, dout, q, k, v, out kernels.Tensor, scale float32) [3]float64 {
	widen := func(t kernels.Tensor) kernels.Tensor {
		w, err := be.Alloc(kernels.F32, t.Shape()...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { be.Free(w) })
		if err := be.Convert(w, t); err != nil {
			b.Fatal(err)
		}
		return w
	}
	if err := be.SoftmaxAttentionBackward(dq, dk, dv, dout, q, k, v, out, scale, true); err != nil {
		b.Fatal(err)
	}
	var bf [3][]float64
	for i, g := range []kernels.Tensor{dq, dk, dv} {
		bf[i] = download(b, be, g)
	}
	if err := be.SoftmaxAttentionBackward(dq, dk, dv, dout, widen(q), widen(k), widen(v), out, scale, true); err != nil {
		b.Fatal(err)
	}
	var rel [3]float64
	for i, g := range []kernels.Tensor{dq, dk, dv} {
		rel[i] = conformance.RelErr(bf[i], download(b, be, g))
	}
	return rel
}

// BenchmarkSoftmaxAttentionForwardPaths: the flash kernel of attention.cu
// against the blocked products (softmaxAttentionGEMM), one sequence, 32
// heads of 80, causal, f32, over sequence lengths: where the products
// win decides SoftmaxAttention's dispatch. TFLOP/s counts 4·p·scores.
func BenchmarkSoftmaxAttentionForwardPaths(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(33, 34))
	h, p := 32, 80
	ls := []int{128, 256, 512, 1024, 1428, 2048, 4096}
	if *benchSmall {
		h, ls = 2, []int{100}
	}
	for _, l := range ls {
		q := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
		k := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
		v := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
		out := randomTensor(b, be, rng, kernels.F32, -1, 1, 1, l, h, p)
		scale := float32(1 / math.Sqrt(float64(p)))
		o := be.ops("softmaxattention")
		s := be.attnOperands(o, out, q, k, v)
		if o.err != nil {
			b.Fatal(o.err)
		}
		for _, path := range []string{"flash", "gemm"} {
			b.Run(fmt.Sprintf("l=%d/%s", l, path), func(b *testing.B) {
				ms := measure(b, be, 0, func() error {
					return be.do("attention", func() error {
						if path == "gemm" {
							return be.softmaxAttentionGEMM("attention", s, scale, true)
						}
						f, err := be.kernel("core", "k_softmax_attention")
						if err != nil {
							return err
						}
						return be.attention("attention", f, s, s.l, s.l, 0, scale, true)
					})
				})
				b.ReportMetric(4*float64(h*p)*attnScores(l, true)/(ms*1e-3)/1e12, "TFLOP/s")
				if path == "gemm" {
					got := download(b, be, out)
					if err := be.SoftmaxAttention(out, q, k, v, scale, true); err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(conformance.RelErr(got, download(b, be, out)), "relerr-vs-flash")
				}
			})
		}
	}
}

// BenchmarkMatMulAT: the weight gradients of Phi-2's MLP over one
// sequence, accumulated: dW1[10240, 2560] += dYᵀ·X and dW2[2560, 10240].
func BenchmarkMatMulAT(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(35, 36))
	rows, d, ff := 1428, 2560, 10240
	if *benchSmall {
		rows, d, ff = 64, 96, 128
	}
	for _, c := range []struct {
		dt   kernels.DType
		m, n int
	}{{kernels.BF16, ff, d}, {kernels.BF16, d, ff}, {kernels.F32, ff, d}} {
		b.Run(fmt.Sprintf("%v/%dx%dx%d", c.dt, rows, c.m, c.n), func(b *testing.B) {
			dy := randomTensor(b, be, rng, c.dt, -1, 1, rows, c.m)
			x := randomTensor(b, be, rng, c.dt, -1, 1, rows, c.n)
			dw := randomTensor(b, be, rng, kernels.F32, -1, 1, c.m, c.n)
			ms := measure(b, be, 0, func() error { return be.MatMulAT(dw, dy, x, true) })
			b.ReportMetric(2*float64(rows)*float64(c.m)*float64(c.n)/(ms*1e-3)/1e12, "TFLOP/s")
		})
	}
}

// BenchmarkDenseGradRows: the memory-bound operations on one sequence's
// activations [1428, 2560] (the MLP's 10240 for GELU), in GB/s of bytes
// read and written.
func BenchmarkDenseGradRows(b *testing.B) {
	be := benchBackend(b)
	rng := rand.New(rand.NewPCG(37, 38))
	rows, d, ff := 1428, 2560, 10240
	if *benchSmall {
		rows, d, ff = 64, 96, 128
	}
	x := randomTensor(b, be, rng, kernels.F32, -1, 1, rows, d)
	dy := randomTensor(b, be, rng, kernels.F32, -1, 1, rows, d)
	dx := randomTensor(b, be, rng, kernels.F32, -1, 1, rows, d)
	w := randomTensor(b, be, rng, kernels.F32, 0.5, 1.5, d)
	bias := randomTensor(b, be, rng, kernels.F32, -1, 1, d)
	xf := randomTensor(b, be, rng, kernels.F32, -1, 1, rows, ff)
	dyf := randomTensor(b, be, rng, kernels.F32, -1, 1, rows, ff)
	dxf := randomTensor(b, be, rng, kernels.F32, -1, 1, rows, ff)
	n := float64(rows * d)
	for _, c := range []struct {
		name  string
		bytes float64
		op    func() error
	}{
		{"layernormbackward", 16 * n, func() error { return be.LayerNormBackward(dx, dy, x, w, 1e-5) }},
		{"rmsnormbackward", 16 * n, func() error { return be.RMSNormBackward(dx, dy, x, w, 1e-5) }},
		{"gelubackward-tanh", 12 * float64(rows*ff), func() error { return be.GELUBackward(dxf, dyf, xf, kernels.GELUTanh) }},
		{"sumrows", 4 * n, func() error { return be.SumRows(bias, dy, true) }},
		{"dropout", 8 * n, func() error { return be.Dropout(dx, x, 0x1234, 0.1) }},
	} {
		b.Run(c.name, func(b *testing.B) { measure(b, be, c.bytes, c.op) })
	}
}
