package conformance

import (
	"math"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// RunMambaGrad checks the kernels.MambaGrad family of the backend from
// newBackend against the float64 backward references of package
// reference; it skips when the backend does not implement the family.
//
// Besides the suite's conventions (fresh seeded inputs, NaN-poisoned
// written outputs, the reference on exactly the values the backend
// received), accumulated gradients start from random values of the
// gradient's own size, and must come back as those values plus the
// gradient: an operation that overwrites instead of adding, or forgets to
// add, is off by about the whole value. Optional gradient outputs are
// also passed as nil, and the inputs of the conv and the scan must be
// left as they were. The scan uses tol.Scan (tol.Scan or tol.BF16,
// whichever is larger, on BF16 operands); the other operations tol.F32.
func RunMambaGrad(t *testing.T, newBackend func() kernels.Backend, tol Tolerances) {
	t.Helper()
	be := newBackend()
	t.Cleanup(func() {
		if err := be.Close(); err != nil {
			t.Errorf("close %s: %v", be.Name(), err)
		}
	})
	mg, ok := be.(kernels.MambaGrad)
	if !ok {
		t.Skipf("backend %s does not implement kernels.MambaGrad", be.Name())
	}
	s := &suite{be: be, tol: tol}
	t.Logf("backend %s", be.Name())
	for _, c := range []struct {
		name string
		fn   func(*env, kernels.MambaGrad)
	}{
		{"CausalConv1dBackward", s.causalConv1dBackward},
		{"DtSoftplusBackward", s.dtSoftplusBackward},
		{"GatedRMSNormBackward", s.gatedRMSNormBackward},
		{"SSDChunkScanBackward", s.ssdBackward},
		{"SSDChunkScanBackwardBF16", s.ssdBackwardBF16},
		{"SSDChunkScanBackwardExtremeDecay", s.ssdBackwardExtreme},
		{"Errors", s.mambaGradErrors},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(s.env(t), mg) })
	}
}

// accumulator returns an F32 tensor of grad's shape pre-filled with random
// float32 values about as large as grad (its root mean square), and the
// float64 values it must hold once grad has been added into it.
func (e *env) accumulator(grad *reference.Array) (kernels.Tensor, *reference.Array) {
	e.Helper()
	var ss float64
	for _, v := range grad.Data {
		ss += v * v
	}
	rms := math.Sqrt(ss / float64(max(1, grad.Len())))
	if rms == 0 {
		rms = 1
	}
	start := e.rand(-1, 1, grad.Shape...)
	want := grad.Clone()
	for i, v := range start.Data {
		start.Data[i] = float64(float32(v * rms))
		want.Data[i] += start.Data[i]
	}
	return e.up(start), want
}

func (s *suite) causalConv1dBackward(e *env, mg kernels.MambaGrad) {
	cases := []struct {
		b, l, c, k int
		bias, silu bool
	}{
		{2, 9, 5, 4, true, true},
		{1, 2, 3, 4, true, true}, // shorter than the kernel
		{3, 17, 1, 1, false, false},
		{1, 40, 70, 3, false, true},
		{2, 33, 7, 4, true, false},
		{1, 25, 130, 4, true, true}, // channels past a multiple of 64
	}
	for _, c := range cases {
		u := e.rand(-2, 2, c.b, c.l, c.c)
		w := e.rand(-0.5, 0.5, c.c, c.k)
		dout := e.rand(-1, 1, c.b, c.l, c.c)
		var bt kernels.Tensor
		var br *reference.Array
		if c.bias {
			br = e.rand(-0.5, 0.5, c.c)
			bt = e.up(br)
		}
		wantDu, wantDw, wantDb, err := reference.CausalConv1dBackward(dout, u, w, br, c.silu)
		if err != nil {
			e.Fatalf("reference: %v", err)
		}
		what := name("causalconv1d backward %+v", c)
		// Every gradient, the parameters' accumulated.
		du := e.poisoned(c.b, c.l, c.c)
		dw, wantW := e.accumulator(wantDw)
		var db kernels.Tensor
		var wantB *reference.Array
		if c.bias {
			db, wantB = e.accumulator(wantDb)
		}
		doutT, uT := e.up(dout), e.up(u)
		e.must(what, mg.CausalConv1dBackward(du, dw, db, doutT, uT, e.up(w), bt, c.silu))
		e.exact(what+" leaves dout as it was", e.down(doutT), dout)
		e.exact(what+" leaves u as it was", e.down(uT), u)
		e.check(what+" du", e.down(du), wantDu, e.tol.F32)
		e.check(what+" dweight", e.down(dw), wantW, e.tol.F32)
		if c.bias {
			e.check(what+" dbias", e.down(db), wantB, e.tol.F32)
		}
		// The parameter gradients left out.
		du2 := e.poisoned(c.b, c.l, c.c)
		e.must(what+" without parameter gradients", mg.CausalConv1dBackward(du2, nil, nil, e.up(dout), e.up(u), e.up(w), bt, c.silu))
		e.check(what+" du without parameter gradients", e.down(du2), wantDu, e.tol.F32)
	}
}

func (s *suite) dtSoftplusBackward(e *env, mg kernels.MambaGrad) {
	for _, shape := range [][]int{{2, 7, 5}, {1, 1, 1}, {1, 300, 32}} {
		h := shape[len(shape)-1]
		raw := e.rand(-30, 30, shape...) // both tails: σ ≈ 0 and the x > 20 branch
		bias := e.rand(-5, 1, h)
		ddt := e.rand(-1, 1, shape...)
		for _, c := range []struct{ bias, dbias bool }{{true, true}, {false, true}, {true, false}} {
			var bt kernels.Tensor
			var br *reference.Array
			if c.bias {
				bt, br = e.up(bias), bias
			}
			wantRaw, wantDb, err := reference.DtSoftplusBackward(ddt, raw, br)
			if err != nil {
				e.Fatalf("reference: %v", err)
			}
			what := name("dtsoftplus backward %v bias=%v dbias=%v", shape, c.bias, c.dbias)
			dRaw := e.poisoned(shape...)
			var db kernels.Tensor
			var wantB *reference.Array
			if c.dbias {
				db, wantB = e.accumulator(wantDb)
			}
			e.must(what, mg.DtSoftplusBackward(dRaw, db, e.up(ddt), e.up(raw), bt))
			e.check(what+" dRaw", e.down(dRaw), wantRaw, e.tol.F32)
			if c.dbias {
				e.check(what+" dbias", e.down(db), wantB, e.tol.F32)
			}
		}
	}
}

func (s *suite) gatedRMSNormBackward(e *env, mg kernels.MambaGrad) {
	// Groups of at least a few channels: with a group of one, the gradient
	// is w·dout·eps/(g²+eps), a cancellation no float32 formula resolves.
	cases := []struct {
		shape []int
		group int
	}{{[]int{2, 5, 24}, 24}, {[]int{2, 5, 24}, 6}, {[]int{3, 160}, 80}, {[]int{1, 7}, 7}, {[]int{2, 3, 2560}, 80}}
	for _, c := range cases {
		n := c.shape[len(c.shape)-1]
		y := e.rand(-3, 3, c.shape...)
		z := e.rand(-4, 4, c.shape...)
		w := e.rand(0.5, 1.5, n)
		dout := e.rand(-1, 1, c.shape...)
		for _, gated := range []bool{true, false} {
			var zt kernels.Tensor
			var zr *reference.Array
			if gated {
				zt, zr = e.up(z), z
			}
			wantDy, wantDz, wantDw, err := reference.GatedRMSNormBackward(dout, y, zr, w, c.group, 1e-5)
			if err != nil {
				e.Fatalf("reference: %v", err)
			}
			what := name("gatedrmsnorm backward %v group %d gated=%v", c.shape, c.group, gated)
			dy := e.poisoned(c.shape...)
			var dz kernels.Tensor
			if gated {
				dz = e.poisoned(c.shape...)
			}
			dw, wantW := e.accumulator(wantDw)
			e.must(what, mg.GatedRMSNormBackward(dy, dz, dw, e.up(dout), e.up(y), zt, e.up(w), c.group, 1e-5))
			e.check(what+" dy", e.down(dy), wantDy, e.tol.F32)
			if gated {
				e.check(what+" dz", e.down(dz), wantDz, e.tol.F32)
			}
			e.check(what+" dweight", e.down(dw), wantW, e.tol.F32)
			// Without the weight's gradient.
			dy2 := e.poisoned(c.shape...)
			var dz2 kernels.Tensor
			if gated {
				dz2 = e.poisoned(c.shape...)
			}
			e.must(what+" without dweight", mg.GatedRMSNormBackward(dy2, dz2, nil, e.up(dout), e.up(y), zt, e.up(w), c.group, 1e-5))
			e.check(what+" dy without dweight", e.down(dy2), wantDy, e.tol.F32)
			if gated {
				e.check(what+" dz without dweight", e.down(dz2), wantDz, e.tol.F32)
			}
		}
	}
}

// ssdGradCase is one configuration of the scan's backward. withState is
// never set: the backward starts from a zero state.
type ssdGradCase struct {
	ssdCase
	noDD bool // D given, its gradient not asked for
	// Operands uploaded as BF16 (the rest F32).
	bf16XBC, bf16DtAD bool
}

// runSSDBackward runs SSDChunkScanBackward on one case and checks every
// gradient against the float64 recurrent backward. It reports false when
// the backend refused BF16 operands that its forward refuses too (checked
// here: refusing BF16 operands the forward accepts is a failure).
func (e *env) runSSDBackward(mg kernels.MambaGrad, c ssdGradCase, tol float64) bool {
	e.Helper()
	x, dt, A, B, C, D, _ := e.ssdInputs(c.ssdCase)
	dy := e.rand(-1, 1, c.b, c.l, c.h, c.p)
	upXBC := func(a *reference.Array) kernels.Tensor {
		if c.bf16XBC {
			return e.upBF16(a)
		}
		return e.up(a)
	}
	upDtAD := func(a *reference.Array) kernels.Tensor {
		if c.bf16DtAD {
			return e.upBF16(a)
		}
		return e.up(a)
	}
	// Upload first: BF16 uploads round the reference operands in place.
	xt, Bt, Ct := upXBC(x), upXBC(B), upXBC(C)
	dtt, At := upDtAD(dt), upDtAD(A)
	var Dt kernels.Tensor
	if D != nil {
		Dt = upDtAD(D)
	}
	gr, err := reference.SSDBackward(dy, x, dt, A, B, C, D)
	if err != nil {
		e.Fatalf("reference: %v", err)
	}
	what := name("ssd backward %+v", c)
	dx := e.poisoned(c.b, c.l, c.h, c.p)
	ddt := e.poisoned(c.b, c.l, c.h)
	dB := e.poisoned(c.b, c.l, c.g, c.n)
	dC := e.poisoned(c.b, c.l, c.g, c.n)
	dA, wantA := e.accumulator(gr.DA)
	var dD kernels.Tensor
	var wantD *reference.Array
	if D != nil && !c.noDD {
		dD, wantD = e.accumulator(gr.DD)
	}
	dyT := e.up(dy)
	err = mg.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dyT, xt, dtt, At, Bt, Ct, Dt, c.chunk)
	if err != nil && (c.bf16XBC || c.bf16DtAD) {
		ferr := e.be.SSDChunkScan(e.poisoned(c.b, c.l, c.h, c.p), xt, dtt, At, Bt, Ct, Dt, nil, c.chunk)
		if ferr == nil {
			e.Errorf("%s: the backward refuses BF16 operands the forward accepts: %v", what, err)
			return true
		}
		e.Logf("%s: BF16 operands refused, as by the forward: %v", what, err)
		return false
	}
	e.must(what, err)
	for _, in := range []struct {
		name string
		t    kernels.Tensor
		want *reference.Array
	}{{"dy", dyT, dy}, {"x", xt, x}, {"dt", dtt, dt}, {"B", Bt, B}, {"C", Ct, C}} {
		e.exact(what+" leaves "+in.name+" as it was", e.down(in.t), in.want)
	}
	e.check(what+" dx", e.down(dx), gr.DX, tol)
	e.check(what+" ddt", e.down(ddt), gr.DDt, tol)
	e.check(what+" dA", e.down(dA), wantA, tol)
	e.check(what+" dB", e.down(dB), gr.DB, tol)
	e.check(what+" dC", e.down(dC), gr.DC, tol)
	if dD != nil {
		e.check(what+" dD", e.down(dD), wantD, tol)
	}
	return true
}

func (s *suite) ssdBackward(e *env, mg kernels.MambaGrad) {
	for _, c := range []ssdGradCase{
		{ssdCase: ssdCase{b: 2, l: 37, h: 4, p: 5, g: 2, n: 3, chunk: 8, withD: true, dtLo: 0.001, dtHi: 0.5, aLo: -4, aHi: -0.1}},
		{ssdCase: ssdCase{b: 1, l: 64, h: 3, p: 8, g: 1, n: 16, chunk: 16, dtLo: 0.001, dtHi: 0.1, aLo: -16, aHi: -1}},
		{ssdCase: ssdCase{b: 1, l: 1, h: 2, p: 3, g: 2, n: 4, chunk: 4, withD: true, dtLo: 0.01, dtHi: 1, aLo: -2, aHi: -0.5}},
		{ssdCase: ssdCase{b: 2, l: 10, h: 6, p: 4, g: 3, n: 5, chunk: 64, withD: true, dtLo: 0.01, dtHi: 1, aLo: -2, aHi: -0.5}}, // chunk > L
		{ssdCase: ssdCase{b: 1, l: 129, h: 4, p: 7, g: 4, n: 9, chunk: 1, dtLo: 0.01, dtHi: 0.3, aLo: -3, aHi: -0.1}},            // chunk of one token
		{ssdCase: ssdCase{b: 1, l: 300, h: 2, p: 16, g: 2, n: 16, chunk: 64, withD: true, dtLo: 0.001, dtHi: 0.1, aLo: -8, aHi: -1}, noDD: true},
		{ssdCase: ssdCase{b: 1, l: 160, h: 4, p: 80, g: 2, n: 80, chunk: 64, withD: true, dtLo: 0.001, dtHi: 0.1, aLo: -16, aHi: -1}}, // Phi-2 head sizes
		{ssdCase: ssdCase{b: 2, l: 96, h: 4, p: 32, g: 4, n: 32, chunk: 32, withD: true, dtLo: 0.001, dtHi: 0.2, aLo: -8, aHi: -1}},
	} {
		e.runSSDBackward(mg, c, e.tol.Scan)
	}
}

// ssdBackwardBF16: x, B and C (and then dt, A and D too) as BF16, where
// the backend's forward takes them.
func (s *suite) ssdBackwardBF16(e *env, mg kernels.MambaGrad) {
	tol := max(e.tol.Scan, e.tol.BF16)
	ran := 0
	for _, c := range []ssdGradCase{
		{ssdCase: ssdCase{b: 2, l: 37, h: 4, p: 5, g: 2, n: 3, chunk: 8, withD: true, dtLo: 0.001, dtHi: 0.5, aLo: -4, aHi: -0.1}, bf16XBC: true},
		{ssdCase: ssdCase{b: 1, l: 100, h: 4, p: 32, g: 2, n: 32, chunk: 32, withD: true, dtLo: 0.001, dtHi: 0.2, aLo: -8, aHi: -1}, bf16XBC: true},
		{ssdCase: ssdCase{b: 1, l: 70, h: 4, p: 16, g: 4, n: 16, chunk: 64, withD: true, dtLo: 0.001, dtHi: 0.2, aLo: -8, aHi: -1}, bf16XBC: true, bf16DtAD: true},
	} {
		if e.runSSDBackward(mg, c, tol) {
			ran++
		}
	}
	if ran == 0 {
		e.Skipf("backend %s takes no BF16 scan operands (nor does its forward)", e.be.Name())
	}
}

// ssdBackwardExtreme: decays that underflow (dt·A down to −500) and
// near-one decays over a long sequence must give finite, correct
// gradients.
func (s *suite) ssdBackwardExtreme(e *env, mg kernels.MambaGrad) {
	e.runSSDBackward(mg, ssdGradCase{ssdCase: ssdCase{b: 1, l: 50, h: 3, p: 4, g: 3, n: 4, chunk: 16, withD: true, dtLo: 1, dtHi: 25, aLo: -20, aHi: -5}}, e.tol.Scan)
	e.runSSDBackward(mg, ssdGradCase{ssdCase: ssdCase{b: 1, l: 50, h: 2, p: 4, g: 1, n: 4, chunk: 16, dtLo: 1e-6, dtHi: 1e-4, aLo: -1e-3, aHi: -1e-6}}, e.tol.Scan)
	e.runSSDBackward(mg, ssdGradCase{ssdCase: ssdCase{b: 1, l: 1000, h: 2, p: 8, g: 2, n: 8, chunk: 64, withD: true, dtLo: 0.001, dtHi: 10, aLo: -20, aHi: -0.01}}, e.tol.Scan)
}

// mambaGradErrors: bad shapes, dtypes and arguments are returned errors,
// never panics.
func (s *suite) mambaGradErrors(e *env, mg kernels.MambaGrad) {
	// Conv.
	u := e.up(e.rand(-1, 1, 1, 6, 5))
	w := e.up(e.rand(-1, 1, 5, 4))
	bias := e.up(e.rand(-1, 1, 5))
	dout := e.up(e.rand(-1, 1, 1, 6, 5))
	e.fails("conv backward du of the wrong shape", func() error {
		return mg.CausalConv1dBackward(e.poisoned(1, 6, 4), nil, nil, dout, u, w, bias, true)
	})
	e.fails("conv backward dout of the wrong shape", func() error {
		return mg.CausalConv1dBackward(e.poisoned(1, 6, 5), nil, nil, e.up(e.rand(-1, 1, 1, 5, 5)), u, w, bias, true)
	})
	e.fails("conv backward wrong weight", func() error {
		return mg.CausalConv1dBackward(e.poisoned(1, 6, 5), nil, nil, dout, u, e.up(e.rand(-1, 1, 4, 4)), bias, true)
	})
	e.fails("conv backward dweight of the wrong shape", func() error {
		return mg.CausalConv1dBackward(e.poisoned(1, 6, 5), e.up(e.rand(-1, 1, 5, 3)), nil, dout, u, w, bias, true)
	})
	e.fails("conv backward dbias of the wrong shape", func() error {
		return mg.CausalConv1dBackward(e.poisoned(1, 6, 5), nil, e.up(e.rand(-1, 1, 4)), dout, u, w, bias, true)
	})
	e.fails("conv backward 2-D u", func() error {
		return mg.CausalConv1dBackward(e.poisoned(6, 5), nil, nil, e.up(e.rand(-1, 1, 6, 5)), e.up(e.rand(-1, 1, 6, 5)), w, bias, true)
	})
	// Dt.
	raw := e.up(e.rand(-1, 1, 2, 3, 4))
	e.fails("dt backward ddt of the wrong shape", func() error {
		return mg.DtSoftplusBackward(e.poisoned(2, 3, 4), nil, e.up(e.rand(-1, 1, 2, 4, 3)), raw, nil)
	})
	e.fails("dt backward bias of the wrong shape", func() error {
		return mg.DtSoftplusBackward(e.poisoned(2, 3, 4), nil, e.up(e.rand(-1, 1, 2, 3, 4)), raw, e.up(e.rand(-1, 1, 3)))
	})
	e.fails("dt backward dbias of the wrong shape", func() error {
		return mg.DtSoftplusBackward(e.poisoned(2, 3, 4), e.up(e.rand(-1, 1, 5)), e.up(e.rand(-1, 1, 2, 3, 4)), raw, nil)
	})
	// Norm.
	y := e.up(e.rand(-1, 1, 3, 8))
	z := e.up(e.rand(-1, 1, 3, 8))
	nw := e.up(e.rand(0.5, 1.5, 8))
	g := e.up(e.rand(-1, 1, 3, 8))
	e.fails("norm backward z without dz", func() error {
		return mg.GatedRMSNormBackward(e.poisoned(3, 8), nil, nil, g, y, z, nw, 4, 1e-5)
	})
	e.fails("norm backward dz without z", func() error {
		return mg.GatedRMSNormBackward(e.poisoned(3, 8), e.poisoned(3, 8), nil, g, y, nil, nw, 4, 1e-5)
	})
	e.fails("norm backward group not dividing", func() error {
		return mg.GatedRMSNormBackward(e.poisoned(3, 8), nil, nil, g, y, nil, nw, 3, 1e-5)
	})
	e.fails("norm backward dweight of the wrong shape", func() error {
		return mg.GatedRMSNormBackward(e.poisoned(3, 8), nil, e.up(e.rand(-1, 1, 4)), g, y, nil, nw, 4, 1e-5)
	})
	e.fails("norm backward dout of the wrong shape", func() error {
		return mg.GatedRMSNormBackward(e.poisoned(3, 8), nil, nil, e.up(e.rand(-1, 1, 8, 3)), y, nil, nw, 4, 1e-5)
	})
	// Scan: 4 heads, groups of 2 (B2) or 3 (B3).
	x := e.up(e.rand(-1, 1, 1, 8, 4, 3))
	dy := e.up(e.rand(-1, 1, 1, 8, 4, 3))
	dt := e.up(e.rand(0, 1, 1, 8, 4))
	A := e.up(e.rand(-1, 0, 4))
	D := e.up(e.rand(-1, 1, 4))
	B2 := e.up(e.rand(-1, 1, 1, 8, 2, 2))
	B3 := e.up(e.rand(-1, 1, 1, 8, 3, 2))
	grads := func() (dx, ddt, dA, dB, dC kernels.Tensor) {
		return e.poisoned(1, 8, 4, 3), e.poisoned(1, 8, 4), e.up(e.rand(-1, 1, 4)), e.poisoned(1, 8, 2, 2), e.poisoned(1, 8, 2, 2)
	}
	e.fails("ssd backward heads not a multiple of groups", func() error {
		dx, ddt, dA, _, _ := grads()
		return mg.SSDChunkScanBackward(dx, ddt, dA, e.poisoned(1, 8, 3, 2), e.poisoned(1, 8, 3, 2), nil, dy, x, dt, A, B3, B3, nil, 4)
	})
	e.fails("ssd backward chunk 0", func() error {
		dx, ddt, dA, dB, dC := grads()
		return mg.SSDChunkScanBackward(dx, ddt, dA, dB, dC, nil, dy, x, dt, A, B2, B2, nil, 0)
	})
	e.fails("ssd backward dD without D", func() error {
		dx, ddt, dA, dB, dC := grads()
		return mg.SSDChunkScanBackward(dx, ddt, dA, dB, dC, e.up(e.rand(-1, 1, 4)), dy, x, dt, A, B2, B2, nil, 4)
	})
	e.fails("ssd backward dB of the wrong shape", func() error {
		dx, ddt, dA, _, dC := grads()
		return mg.SSDChunkScanBackward(dx, ddt, dA, e.poisoned(1, 8, 4, 2), dC, nil, dy, x, dt, A, B2, B2, D, 4)
	})
	e.fails("ssd backward dA of the wrong shape", func() error {
		dx, ddt, _, dB, dC := grads()
		return mg.SSDChunkScanBackward(dx, ddt, e.up(e.rand(-1, 1, 2)), dB, dC, nil, dy, x, dt, A, B2, B2, D, 4)
	})
	e.fails("ssd backward dy of the wrong shape", func() error {
		dx, ddt, dA, dB, dC := grads()
		return mg.SSDChunkScanBackward(dx, ddt, dA, dB, dC, nil, e.up(e.rand(-1, 1, 1, 8, 4, 2)), x, dt, A, B2, B2, D, 4)
	})
	e.fails("ssd backward ddt of the wrong shape", func() error {
		dx, _, dA, dB, dC := grads()
		return mg.SSDChunkScanBackward(dx, e.poisoned(1, 8, 3), dA, dB, dC, nil, dy, x, dt, A, B2, B2, D, 4)
	})
	e.fails("ssd backward bf16 dx", func() error {
		_, ddt, dA, dB, dC := grads()
		return mg.SSDChunkScanBackward(e.upBF16(e.rand(-1, 1, 1, 8, 4, 3)), ddt, dA, dB, dC, nil, dy, x, dt, A, B2, B2, D, 4)
	})
}
