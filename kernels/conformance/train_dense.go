package conformance

import (
	"math"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// RunDenseGrad checks the kernels.DenseGrad operations (kernels/train.go)
// of the backend from newBackend against the float64 references of
// kernels/reference/train_dense.go, on fresh random inputs: odd sizes,
// leading dimensions flattened, GQA head ratios, causal and full
// attention over more keys than one block, partial rotary, BF16 operands
// for MatMulAT, accumulate false into NaN-poisoned outputs and true into
// pre-filled ones, SetCols leaving the other columns untouched, Dropout's
// mask equal to the reference's element for element; and that bad shapes
// and arguments are returned errors. It skips when the backend is not a
// kernels.DenseGrad.
func RunDenseGrad(t *testing.T, newBackend func() kernels.Backend, tol Tolerances) {
	t.Helper()
	be := newBackend()
	t.Cleanup(func() {
		if err := be.Close(); err != nil {
			t.Errorf("close %s: %v", be.Name(), err)
		}
	})
	dg, ok := be.(kernels.DenseGrad)
	if !ok {
		t.Skipf("backend %s does not implement kernels.DenseGrad", be.Name())
	}
	s := &suite{be: be, tol: tol}
	for _, c := range []struct {
		name string
		fn   func(*env, kernels.DenseGrad)
	}{
		{"MatMulAT", s.denseMatMulAT},
		{"SumRows", s.denseSumRows},
		{"ActivationBackward", s.denseActivationBackward},
		{"LayerNormBackward", s.denseLayerNormBackward},
		{"RMSNormBackward", s.denseRMSNormBackward},
		{"SoftmaxAttentionBackward", s.denseSoftmaxAttentionBackward},
		{"RoPEInverse", s.denseRoPEInverse},
		{"SumHeads", s.denseSumHeads},
		{"SetCols", s.denseSetCols},
		{"Fill", s.denseFill},
		{"Dropout", s.denseDropout},
		{"DenseGradErrors", s.denseGradErrors},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(s.env(t), dg) })
	}
}

// densePrefilled uploads fresh random values of the given shape, returning the
// tensor and the values (for an accumulate=true check).
func (e *env) densePrefilled(shape ...int) (kernels.Tensor, *reference.Array) {
	e.Helper()
	a := e.rand(-1, 1, shape...)
	return e.up(a), a
}

// densePlus returns a + b, failing the test on a shape mismatch.
func (e *env) densePlus(a, b *reference.Array) *reference.Array {
	e.Helper()
	return e.want(reference.Add(a, b))
}

var denseDTypePairs = [][2]kernels.DType{{kernels.F32, kernels.F32}, {kernels.BF16, kernels.F32}, {kernels.F32, kernels.BF16}, {kernels.BF16, kernels.BF16}}

// denseMatMulAT: every mix of F32 and BF16 operands, leading dimensions of a
// and b flattened differently, a long shared dimension (float32
// accumulation over 3000 rows), written into poisoned and added into
// pre-filled outputs.
func (s *suite) denseMatMulAT(e *env, dg kernels.DenseGrad) {
	cases := []struct{ a, b []int }{
		{[]int{1, 1}, []int{1, 1}},
		{[]int{7, 5}, []int{7, 13}},
		{[]int{3, 5, 33}, []int{15, 17}},
		{[]int{300, 64}, []int{2, 150, 129}},
		{[]int{2, 70, 300}, []int{140, 333}}, // several blocks in every dimension
		{[]int{3000, 24}, []int{3000, 40}},   // a long sum
	}
	for _, c := range cases {
		m, n := c.a[len(c.a)-1], c.b[len(c.b)-1]
		for _, dts := range denseDTypePairs {
			a := e.rand(-1, 1, c.a...)
			b := e.rand(-1, 1, c.b...)
			at, bt := e.upAs(a, dts[0]), e.upAs(b, dts[1])
			tol := e.tol.F32
			if dts[0] == kernels.BF16 || dts[1] == kernels.BF16 {
				tol = e.tol.BF16
			}
			want := e.want(reference.MatMulAT(a, b))
			what := name("matmulat a%v(%v) b%v(%v)", c.a, dts[0], c.b, dts[1])
			out := e.poisoned(m, n)
			e.must(what, dg.MatMulAT(out, at, bt, false))
			e.check(what+" written", e.down(out), want, tol)
			acc, prev := e.densePrefilled(m, n)
			e.must(what, dg.MatMulAT(acc, at, bt, true))
			e.check(what+" accumulated", e.down(acc), e.densePlus(prev, want), tol)
		}
	}
}

// denseSumRows: rows many and few, written and accumulated.
func (s *suite) denseSumRows(e *env, dg kernels.DenseGrad) {
	for _, shape := range [][]int{{3, 4, 7}, {1, 1}, {1000, 33}, {5, 3000}, {2, 600, 129}} {
		n := shape[len(shape)-1]
		a := e.rand(-1, 1, shape...)
		want := e.want(reference.SumRows(a))
		out := e.poisoned(n)
		e.must("sumrows", dg.SumRows(out, e.up(a), false))
		e.check(name("sumrows %v written", shape), e.down(out), want, e.tol.F32)
		acc, prev := e.densePrefilled(n)
		e.must("sumrows", dg.SumRows(acc, e.up(a), true))
		e.check(name("sumrows %v accumulated", shape), e.down(acc), e.densePlus(prev, want), e.tol.F32)
	}
}

// denseActivationBackward: SiLU and both GELU forms, small and large (parallel)
// sizes, the far tails and zero, out of place and in place (dx = dy).
func (s *suite) denseActivationBackward(e *env, dg kernels.DenseGrad) {
	for _, shape := range [][]int{{2, 3, 5}, {1}, {70001}} {
		x := e.rand(-6, 6, shape...)
		for i, v := range []float64{40, -40, 0} {
			if i < x.Len() {
				x.Data[i] = v
			}
		}
		dy := e.rand(-2, 2, shape...)
		cases := []struct {
			op   string
			call func(dx, dy, x kernels.Tensor) error
			want func() (*reference.Array, error)
		}{
			{"silubackward", dg.SiLUBackward, func() (*reference.Array, error) { return reference.SiLUBackward(dy, x) }},
			{"gelubackward erf", func(dx, dy, x kernels.Tensor) error { return dg.GELUBackward(dx, dy, x, kernels.GELUErf) },
				func() (*reference.Array, error) { return reference.GELUBackward(dy, x, false) }},
			{"gelubackward tanh", func(dx, dy, x kernels.Tensor) error { return dg.GELUBackward(dx, dy, x, kernels.GELUTanh) },
				func() (*reference.Array, error) { return reference.GELUBackward(dy, x, true) }},
		}
		for _, c := range cases {
			want := e.want(c.want())
			dx := e.poisoned(shape...)
			e.must(c.op, c.call(dx, e.up(dy), e.up(x)))
			e.check(name("%s %v", c.op, shape), e.down(dx), want, e.tol.F32)
			inplace := e.up(dy)
			e.must(c.op+" in place", c.call(inplace, inplace, e.up(x)))
			e.check(name("%s in place %v", c.op, shape), e.down(inplace), want, e.tol.F32)
		}
	}
}

func (s *suite) denseLayerNormBackward(e *env, dg kernels.DenseGrad) {
	for _, shape := range [][]int{{4, 33}, {2, 3, 256}, {1, 1}, {3, 2560}} {
		n := shape[len(shape)-1]
		x := e.rand(4, 6, shape...) // a mean far from zero tests the variance's cancellation
		dy := e.rand(-1, 1, shape...)
		w := e.rand(0.5, 1.5, n)
		for _, eps := range []float32{1e-5, 0.25} {
			dx := e.poisoned(shape...)
			e.must("layernormbackward", dg.LayerNormBackward(dx, e.up(dy), e.up(x), e.up(w), eps))
			e.check(name("layernormbackward %v eps %g", shape, eps), e.down(dx), e.want(reference.LayerNormBackward(dy, x, w, float64(eps))), e.tol.F32)
		}
	}
}

func (s *suite) denseRMSNormBackward(e *env, dg kernels.DenseGrad) {
	for _, shape := range [][]int{{4, 33}, {2, 3, 896}, {1, 1}, {2, 2560}} {
		n := shape[len(shape)-1]
		x := e.rand(-3, 3, shape...)
		dy := e.rand(-1, 1, shape...)
		w := e.rand(0.5, 1.5, n)
		dx := e.poisoned(shape...)
		e.must("rmsnormbackward", dg.RMSNormBackward(dx, e.up(dy), e.up(x), e.up(w), 1e-6))
		e.check(name("rmsnormbackward %v", shape), e.down(dx), e.want(reference.RMSNormBackward(dy, x, w, 1e-6)), e.tol.F32)
	}
}

// denseAttentionPeakedSlack multiplies the F32 tolerance for the attention
// backward at scale 8 (see denseSoftmaxAttentionBackward).
const denseAttentionPeakedSlack = 4

// denseSoftmaxAttentionBackward: GQA ratios, causal and full, a peaked softmax
// (scale 8), sequences longer than 256 keys, Phi-2's head size. The
// forward output handed to the backward is the reference's, rounded to
// float32, so the check measures the backward alone.
//
// The peaked case is allowed denseAttentionPeakedSlack times the F32
// tolerance: its gradient amplifies the rounding of float32 scores
// (logits up to ±40 here). On the CPU backend the peaked case measures
// up to 8e-6 with float32 products and 1.2e-6 with float64-accumulated
// products still stored as float32 scores; the scale-1/√p cases ≤ 5e-7.
func (s *suite) denseSoftmaxAttentionBackward(e *env, dg kernels.DenseGrad) {
	for _, c := range []attnCase{{2, 19, 4, 2, 8}, {1, 1, 3, 3, 5}, {1, 70, 6, 2, 16}, {1, 130, 2, 1, 80}, {1, 300, 4, 2, 64}, {2, 65, 3, 3, 7}} {
		for _, causal := range []bool{true, false} {
			for _, scale := range []float64{1 / math.Sqrt(float64(c.p)), 8} {
				q := e.rand(-1, 1, c.b, c.l, c.h, c.p)
				k := e.rand(-1, 1, c.b, c.l, c.hkv, c.p)
				v := e.rand(-1, 1, c.b, c.l, c.hkv, c.p)
				dout := e.rand(-1, 1, c.b, c.l, c.h, c.p)
				sc := float64(float32(scale))
				out := reference.RoundFloat32(e.want(reference.SoftmaxAttention(q, k, v, sc, causal)))
				wq, wk, wv, err := reference.SoftmaxAttentionBackward(dout, q, k, v, sc, causal)
				if err != nil {
					e.Fatalf("reference: %v", err)
				}
				dq := e.poisoned(c.b, c.l, c.h, c.p)
				dk := e.poisoned(c.b, c.l, c.hkv, c.p)
				dv := e.poisoned(c.b, c.l, c.hkv, c.p)
				what := name("softmaxattentionbackward %+v causal=%v scale=%.3g", c, causal, sc)
				e.must(what, dg.SoftmaxAttentionBackward(dq, dk, dv, e.up(dout), e.up(q), e.up(k), e.up(v), e.up(out), float32(sc), causal))
				tol := e.tol.F32
				if scale > 1 {
					tol *= denseAttentionPeakedSlack
				}
				e.check(what+" dq", e.down(dq), wq, tol)
				e.check(what+" dk", e.down(dk), wk, tol)
				e.check(what+" dv", e.down(dv), wv, tol)
			}
		}
	}
}

// denseRoPEInverse: against the reference, and RoPEInverse after the backend's
// own RoPE gives the input back.
func (s *suite) denseRoPEInverse(e *env, dg kernels.DenseGrad) {
	cases := []struct {
		b, l, h, p, rot int
		theta           float64
		pos0            int
	}{
		{2, 7, 3, 8, 8, 10000, 0},
		{1, 9, 2, 80, 32, 10000, 0}, // Phi-2: partial rotary 0.4 of 80
		{1, 5, 4, 64, 64, 1e6, 1000},
		{2, 3, 1, 10, 2, 500, 7},
	}
	for _, c := range cases {
		x := e.rand(-2, 2, c.b, c.l, c.h, c.p)
		xt := e.up(x)
		e.must("ropeinverse", dg.RoPEInverse(xt, c.rot, c.theta, c.pos0))
		e.check(name("ropeinverse %+v", c), e.down(xt), e.want(reference.RoPEInverse(x, c.rot, c.theta, c.pos0)), e.tol.F32)
		rt := e.up(x)
		e.must("rope", e.be.RoPE(rt, c.rot, c.theta, c.pos0))
		e.must("ropeinverse", dg.RoPEInverse(rt, c.rot, c.theta, c.pos0))
		e.check(name("ropeinverse∘rope %+v", c), e.down(rt), x, e.tol.F32)
	}
}

func (s *suite) denseSumHeads(e *env, dg kernels.DenseGrad) {
	cases := []struct{ rows, srcHeads, heads, dim int }{{6, 2, 6, 4}, {5, 3, 3, 7}, {1, 1, 8, 5}, {33, 4, 32, 3}, {300, 2, 14, 64}}
	for _, c := range cases {
		src := e.rand(-1, 1, c.rows, c.heads*c.dim)
		out := e.poisoned(c.rows, c.srcHeads, c.dim) // [.., srcHeads, dim] from [.., heads·dim]
		e.must("sumheads", dg.SumHeads(out, e.up(src), c.srcHeads, c.heads, c.dim))
		want := e.want(reference.SumHeads(src, c.srcHeads, c.heads, c.dim))
		if c.heads == c.srcHeads {
			e.exact(name("sumheads %+v", c), e.down(out), want)
			continue
		}
		e.check(name("sumheads %+v", c), e.down(out), want, e.tol.F32)
	}
}

// denseSetCols: exact, and the columns outside the range keep dst's values.
func (s *suite) denseSetCols(e *env, dg kernels.DenseGrad) {
	cases := []struct {
		dst        []int
		col0, cols int
	}{{[]int{2, 3, 10}, 5, 4}, {[]int{7, 10}, 0, 10}, {[]int{1, 300, 97}, 96, 1}, {[]int{40, 333}, 0, 200}}
	for _, c := range cases {
		dst := e.rand(-1, 1, c.dst...)
		srcShape := append(append([]int{}, c.dst[:len(c.dst)-1]...), c.cols)
		src := e.rand(-2, 2, srcShape...)
		dt := e.up(dst)
		e.must("setcols", dg.SetCols(dt, e.up(src), c.col0))
		e.exact(name("setcols %v [%d,+%d)", c.dst, c.col0, c.cols), e.down(dt), e.want(reference.SetCols(dst, src, c.col0)))
	}
}

func (s *suite) denseFill(e *env, dg kernels.DenseGrad) {
	for _, shape := range [][]int{{1}, {3, 7}, {70001}} {
		for _, v := range []float32{0, -2.5, float32(math.Inf(1))} {
			t := e.poisoned(shape...)
			e.must("fill", dg.Fill(t, v))
			want := reference.New(shape...)
			for i := range want.Data {
				want.Data[i] = float64(v)
			}
			e.exact(name("fill %v with %g", shape, v), e.down(t), want)
		}
	}
}

// denseDropout: the kept elements are exactly the reference mask's (x has no
// zeros, so a kept element is never 0), kept values scaled by 1/(1−prob),
// in place too; prob 0 is the identity; seeds at both ends of the range.
func (s *suite) denseDropout(e *env, dg kernels.DenseGrad) {
	cases := []struct {
		shape []int
		seed  uint64
		prob  float64
	}{
		{[]int{2, 5, 40}, 1, 0.1},
		{[]int{1, 1}, 7, 0.5},
		{[]int{300, 2560}, 0x5eed, 0.1}, // one Phi-2 sample's residual branch
		{[]int{3, 70}, 0, 0.9},
		{[]int{33, 129}, math.MaxUint64, 0.5},
		{[]int{4, 9}, 3, 0},
	}
	for _, c := range cases {
		x := e.rand(0.5, 2, c.shape...)
		for i := range x.Data {
			if e.rng.IntN(2) == 0 {
				x.Data[i] = -x.Data[i]
			}
		}
		rows := x.Len() / c.shape[len(c.shape)-1]
		kept, err := reference.DropoutKept(rows, c.shape[len(c.shape)-1], c.seed, c.prob)
		if err != nil {
			e.Fatalf("reference: %v", err)
		}
		want := e.want(reference.Dropout(x, c.seed, c.prob))
		what := name("dropout %v seed %#x prob %g", c.shape, c.seed, c.prob)
		out := e.poisoned(c.shape...)
		e.must(what, dg.Dropout(out, e.up(x), c.seed, c.prob))
		got := e.down(out)
		s.denseDropoutMask(e, what, got, kept)
		e.check(what, got, want, e.tol.F32)
		inplace := e.up(x)
		e.must(what+" in place", dg.Dropout(inplace, inplace, c.seed, c.prob))
		e.exact(what+" in place", e.down(inplace), got)
	}
}

// denseDropoutMask requires the zeros of got to be exactly the dropped
// elements of kept.
func (s *suite) denseDropoutMask(e *env, what string, got *reference.Array, kept []bool) {
	e.Helper()
	for i, k := range kept {
		if v := got.Data[i]; k != (v != 0) || math.IsNaN(v) {
			e.Errorf("%s: element %d is %g, the mask says kept=%v", what, i, v, k)
			return
		}
	}
}

// denseGradErrors: bad shapes and arguments are returned errors, never
// panics.
func (s *suite) denseGradErrors(e *env, dg kernels.DenseGrad) {
	a := e.up(e.rand(-1, 1, 4, 6))
	b := e.up(e.rand(-1, 1, 5, 3))
	e.fails("matmulat shared dimension differs", func() error { return dg.MatMulAT(e.poisoned(6, 3), a, b, false) })
	e.fails("matmulat wrong out", func() error { return dg.MatMulAT(e.poisoned(6, 5), a, e.up(e.rand(-1, 1, 4, 3)), true) })
	e.fails("sumrows wrong out", func() error { return dg.SumRows(e.poisoned(5), a, false) })
	e.fails("gelubackward shape mismatch", func() error { return dg.GELUBackward(e.poisoned(4, 6), a, e.up(e.rand(-1, 1, 6, 4)), kernels.GELUErf) })
	e.fails("gelubackward unknown form", func() error { return dg.GELUBackward(e.poisoned(4, 6), a, a, kernels.GELUForm(9)) })
	e.fails("silubackward shape mismatch", func() error { return dg.SiLUBackward(e.poisoned(4, 5), a, a) })
	e.fails("layernormbackward wrong weight", func() error {
		return dg.LayerNormBackward(e.poisoned(4, 6), a, a, e.up(e.rand(-1, 1, 5)), 1e-5)
	})
	e.fails("rmsnormbackward dy of another shape", func() error {
		return dg.RMSNormBackward(e.poisoned(4, 6), e.up(e.rand(-1, 1, 6, 4)), a, e.up(e.rand(-1, 1, 6)), 1e-5)
	})
	q := e.up(e.rand(-1, 1, 1, 5, 4, 3))
	kv := e.up(e.rand(-1, 1, 1, 5, 2, 3))
	kv3 := e.up(e.rand(-1, 1, 1, 5, 3, 3))
	e.fails("softmaxattentionbackward heads not a multiple of kv heads", func() error {
		return dg.SoftmaxAttentionBackward(e.poisoned(1, 5, 4, 3), e.poisoned(1, 5, 3, 3), e.poisoned(1, 5, 3, 3), q, q, kv3, kv3, q, 1, true)
	})
	e.fails("softmaxattentionbackward dk of the query shape", func() error {
		return dg.SoftmaxAttentionBackward(e.poisoned(1, 5, 4, 3), e.poisoned(1, 5, 4, 3), e.poisoned(1, 5, 2, 3), q, q, kv, kv, q, 1, true)
	})
	e.fails("softmaxattentionbackward dout of the kv shape", func() error {
		return dg.SoftmaxAttentionBackward(e.poisoned(1, 5, 4, 3), e.poisoned(1, 5, 2, 3), e.poisoned(1, 5, 2, 3), kv, q, kv, kv, q, 1, true)
	})
	e.fails("ropeinverse odd rotary dim", func() error { return dg.RoPEInverse(q, 3, 1e4, 0) })
	e.fails("ropeinverse rotary dim past head dim", func() error { return dg.RoPEInverse(q, 4, 1e4, 0) })
	e.fails("sumheads not a multiple", func() error { return dg.SumHeads(e.poisoned(4, 6), e.up(e.rand(-1, 1, 4, 15)), 2, 5, 3) })
	e.fails("sumheads src rows", func() error { return dg.SumHeads(e.poisoned(4, 6), e.up(e.rand(-1, 1, 3, 12)), 2, 4, 3) })
	e.fails("setcols past the end", func() error { return dg.SetCols(e.poisoned(4, 6), e.up(e.rand(-1, 1, 4, 4)), 3) })
	e.fails("setcols row mismatch", func() error { return dg.SetCols(e.poisoned(4, 6), e.up(e.rand(-1, 1, 3, 2)), 0) })
	e.fails("fill bf16", func() error { return dg.Fill(e.upBF16(e.rand(-1, 1, 3)), 1) })
	for _, p := range []float64{1, -0.1, math.NaN(), 2} {
		e.fails(name("dropout prob %g", p), func() error { return dg.Dropout(e.poisoned(4, 6), a, 1, p) })
	}
	e.fails("dropout shape mismatch", func() error { return dg.Dropout(e.poisoned(6, 4), a, 1, 0.1) })
}
