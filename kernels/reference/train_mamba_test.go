package reference

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// The backward references against central finite differences of the
// forward references. Each check draws a random cotangent dout, takes the
// scalar L = Σ dout·f(inputs), and compares every analytic gradient with
// finite differences, element by element (or on a random subset for the
// long case), by relative error over the checked elements. The
// differences use the five-point stencil (f(−2h) − 8f(−h) + 8f(h) −
// f(2h))/12h with h = 1e-6·max(1, |v|): in float64 its truncation error is
// O(h⁴) — small even where the strong-decay case's dt³ ≈ 10⁴ multiplies it
// — and its rounding error about 1e-16·|L|/h, so 1e-7 leaves a margin of
// ten or more on these sizes, while a wrong term of a formula shows up at
// 1e-2 or worse.
const fdTol = 1e-7

// dot is Σ a·b.
func dot(a, b *Array) float64 {
	var s float64
	for i, v := range a.Data {
		s += v * b.Data[i]
	}
	return s
}

// fdCheck compares analytic with the central differences of loss with
// respect to the elements idx of in (nil: all of them). loss reads in.
func fdCheck(t *testing.T, what string, in, analytic *Array, idx []int, loss func() float64) {
	t.Helper()
	fdCheckStep(t, what, in, analytic, idx, 1e-6, loss)
}

// fdCheckStep is fdCheck with the step h = step·max(1, |v|).
func fdCheckStep(t *testing.T, what string, in, analytic *Array, idx []int, step float64, loss func() float64) {
	t.Helper()
	if analytic == nil {
		t.Fatalf("%s: no gradient", what)
	}
	if len(analytic.Data) != len(in.Data) {
		t.Fatalf("%s: gradient has %d elements, input %d", what, len(analytic.Data), len(in.Data))
	}
	if idx == nil {
		idx = make([]int, len(in.Data))
		for i := range idx {
			idx[i] = i
		}
	}
	got, fd := New(len(idx)), New(len(idx))
	for k, i := range idx {
		v := in.Data[i]
		h := step * max(1, math.Abs(v))
		at := func(d float64) float64 {
			in.Data[i] = v + d
			return loss()
		}
		fd.Data[k] = (8*(at(h)-at(-h)) - (at(2*h) - at(-2*h))) / (12 * h)
		in.Data[i] = v
		got.Data[k] = analytic.Data[i]
		if math.IsNaN(got.Data[k]) || math.IsInf(got.Data[k], 0) {
			t.Fatalf("%s: element %d is %g", what, i, got.Data[k])
		}
	}
	var norm float64
	for _, v := range fd.Data {
		norm += v * v
	}
	if norm == 0 { // a gradient that is exactly zero (dA of a single token from a zero state)
		for k, v := range got.Data {
			if v != 0 {
				t.Errorf("%s: element %d is %g, finite differences are all zero", what, idx[k], v)
				return
			}
		}
		t.Logf("%s: zero, as the finite differences", what)
		return
	}
	if e := relErr(got, fd); e > fdTol {
		t.Errorf("%s: relative error %.3g against finite differences > %.3g", what, e, fdTol)
	} else {
		t.Logf("%s: relative error %.3g", what, e)
	}
}

// must returns a function that takes a reference's results and fails t on
// its error.
func must(t *testing.T) func(*Array, error) *Array {
	return func(a *Array, err error) *Array {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
}

func TestCausalConv1dBackwardFD(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 1))
	cases := []struct {
		b, l, c, k int
		bias, silu bool
	}{
		{2, 9, 5, 4, true, true},
		{2, 9, 5, 4, false, true},
		{1, 7, 3, 4, true, false},
		{3, 6, 2, 3, false, false},
		{1, 2, 3, 4, true, true}, // shorter than the kernel
		{2, 5, 4, 1, true, true}, // pointwise
	}
	for _, c := range cases {
		name := fmt.Sprintf("%+v", c)
		u := randArray(rng, -2, 2, c.b, c.l, c.c)
		w := randArray(rng, -0.5, 0.5, c.c, c.k)
		bias := randArray(rng, -0.5, 0.5, c.c)
		var bArg *Array
		if c.bias {
			bArg = bias
		}
		dout := randArray(rng, -1, 1, c.b, c.l, c.c)
		du, dw, db, err := CausalConv1dBackward(dout, u, w, bArg, c.silu)
		if err != nil {
			t.Fatal(err)
		}
		loss := func() float64 { return dot(dout, must(t)(CausalConv1d(u, w, bArg, c.silu))) }
		fdCheck(t, name+" du", u, du, nil, loss)
		fdCheck(t, name+" dweight", w, dw, nil, loss)
		// The bias gradient is defined with or without a bias: use one (at
		// its value, or at zero) for the differences.
		if !c.bias {
			clear(bias.Data)
		}
		fdCheck(t, name+" dbias", bias, db, nil, func() float64 { return dot(dout, must(t)(CausalConv1d(u, w, bias, c.silu))) })
	}
}

func TestDtSoftplusBackwardFD(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 1))
	for _, withBias := range []bool{true, false} {
		raw := randArray(rng, -25, 15, 2, 9, 5) // with the bias, some pass 20
		bias := randArray(rng, -5, 8, 5)
		var bArg *Array
		if withBias {
			bArg = bias
		} else {
			clear(bias.Data)
		}
		ddt := randArray(rng, -1, 1, 2, 9, 5)
		dRaw, dbias, err := DtSoftplusBackward(ddt, raw, bArg)
		if err != nil {
			t.Fatal(err)
		}
		loss := func() float64 { return dot(ddt, must(t)(DtSoftplus(raw, bias))) }
		name := fmt.Sprintf("bias=%v", withBias)
		fdCheck(t, name+" dRaw", raw, dRaw, nil, loss)
		fdCheck(t, name+" dbias", bias, dbias, nil, loss)
	}
}

func TestGatedRMSNormBackwardFD(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 1))
	cases := []struct {
		shape []int
		group int
		gate  bool
	}{
		{[]int{2, 3, 12}, 12, true},
		{[]int{2, 3, 12}, 4, true},
		{[]int{2, 3, 12}, 4, false},
		{[]int{5, 7}, 7, false},
		{[]int{3, 6}, 1, true},
	}
	for _, c := range cases {
		name := fmt.Sprintf("%v group %d gate=%v", c.shape, c.group, c.gate)
		n := c.shape[len(c.shape)-1]
		y := randArray(rng, -2, 2, c.shape...)
		var z *Array
		if c.gate {
			z = randArray(rng, -4, 4, c.shape...)
		}
		w := randArray(rng, 0.5, 1.5, n)
		dout := randArray(rng, -1, 1, c.shape...)
		const eps = 1e-5
		dy, dz, dw, err := GatedRMSNormBackward(dout, y, z, w, c.group, eps)
		if err != nil {
			t.Fatal(err)
		}
		if (dz == nil) != (z == nil) {
			t.Fatalf("%s: dz %v with z %v", name, dz != nil, z != nil)
		}
		loss := func() float64 { return dot(dout, must(t)(GatedRMSNorm(y, z, w, c.group, eps))) }
		fdCheck(t, name+" dy", y, dy, nil, loss)
		if z != nil {
			fdCheck(t, name+" dz", z, dz, nil, loss)
		}
		fdCheck(t, name+" dweight", w, dw, nil, loss)
	}
}

// ssdFDCase is one scan configuration of the finite-difference checks.
type ssdFDCase struct {
	b, l, h, p, g, n     int
	withD                bool
	dtLo, dtHi, aLo, aHi float64
}

func TestSSDBackwardFD(t *testing.T) {
	rng := rand.New(rand.NewPCG(14, 1))
	cases := []ssdFDCase{
		{b: 2, l: 11, h: 4, p: 3, g: 2, n: 5, withD: true, dtLo: 0.01, dtHi: 0.8, aLo: -3, aHi: -0.1},
		{b: 1, l: 13, h: 6, p: 2, g: 1, n: 3, dtLo: 0.01, dtHi: 0.8, aLo: -3, aHi: -0.1},          // every head reads one group
		{b: 2, l: 9, h: 3, p: 4, g: 3, n: 2, withD: true, dtLo: 0.1, dtHi: 2, aLo: -2, aHi: -0.5}, // a group per head
		{b: 1, l: 1, h: 2, p: 3, g: 1, n: 4, withD: true, dtLo: 0.1, dtHi: 1, aLo: -1, aHi: -0.1}, // one token
	}
	for _, c := range cases {
		x := randArray(rng, -1, 1, c.b, c.l, c.h, c.p)
		dt := randArray(rng, c.dtLo, c.dtHi, c.b, c.l, c.h)
		A := randArray(rng, c.aLo, c.aHi, c.h)
		B := randArray(rng, -1, 1, c.b, c.l, c.g, c.n)
		C := randArray(rng, -1, 1, c.b, c.l, c.g, c.n)
		D := randArray(rng, 0.5, 1.5, c.h)
		var dArg *Array
		if c.withD {
			dArg = D
		}
		dy := randArray(rng, -1, 1, c.b, c.l, c.h, c.p)
		gr, err := SSDBackward(dy, x, dt, A, B, C, dArg)
		if err != nil {
			t.Fatal(err)
		}
		forwards := map[string]func() float64{
			"recurrence": func() float64 {
				y, _, err := SSDRecurrence(x, dt, A, B, C, dArg, nil)
				return dot(dy, must(t)(y, err))
			},
		}
		// The chunked form: chunks of one token, chunks that leave a
		// remainder, and one chunk longer than the sequence.
		for _, chunk := range []int{1, 3, 4, 16} {
			forwards[fmt.Sprintf("chunked %d", chunk)] = func() float64 {
				y, _, err := SSDChunked(x, dt, A, B, C, dArg, nil, chunk)
				return dot(dy, must(t)(y, err))
			}
		}
		for fname, loss := range forwards {
			name := fmt.Sprintf("%+v %s", c, fname)
			fdCheck(t, name+" dx", x, gr.DX, nil, loss)
			fdCheck(t, name+" ddt", dt, gr.DDt, nil, loss)
			fdCheck(t, name+" dA", A, gr.DA, nil, loss)
			fdCheck(t, name+" dB", B, gr.DB, nil, loss)
			fdCheck(t, name+" dC", C, gr.DC, nil, loss)
			if !c.withD {
				clear(D.Data) // the gradient at D = 0
			}
			fdCheck(t, name+" dD", D, gr.DD, nil, func() float64 {
				y, _, err := SSDRecurrence(x, dt, A, B, C, D, nil)
				return dot(dy, must(t)(y, err))
			})
		}
	}
}

// A long sequence with strong decay: dt·A down to −500, where most
// per-token decays underflow to (almost) zero. The gradients must stay
// finite and agree with finite differences on a random subset of
// elements.
func TestSSDBackwardStrongDecay(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 1))
	const nb, l, H, P, G, N = 1, 600, 2, 3, 1, 4
	x := randArray(rng, -1, 1, nb, l, H, P)
	// dt log-uniform in [1e-3, 25]: most tokens decay past exp(−50), some
	// hardly at all, so dA is not a sum of vanishing terms that finite
	// differences could not resolve.
	dt := randArray(rng, math.Log(1e-3), math.Log(25), nb, l, H)
	for i, v := range dt.Data {
		dt.Data[i] = math.Exp(v)
	}
	A := randArray(rng, -20, -5, H)
	B := randArray(rng, -1, 1, nb, l, G, N)
	C := randArray(rng, -1, 1, nb, l, G, N)
	D := randArray(rng, 0.5, 1.5, H)
	dy := randArray(rng, -1, 1, nb, l, H, P)
	gr, err := SSDBackward(dy, x, dt, A, B, C, D)
	if err != nil {
		t.Fatal(err)
	}
	for name, g := range map[string]*Array{"dx": gr.DX, "ddt": gr.DDt, "dA": gr.DA, "dB": gr.DB, "dC": gr.DC, "dD": gr.DD} {
		for i, v := range g.Data {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("%s element %d is %g", name, i, v)
			}
		}
	}
	loss := func() float64 {
		y, _, err := SSDRecurrence(x, dt, A, B, C, D, nil)
		return dot(dy, must(t)(y, err))
	}
	subset := func(n int) []int {
		idx := make([]int, 40)
		for i := range idx {
			idx[i] = rng.IntN(n)
		}
		return idx
	}
	fdCheck(t, "dx", x, gr.DX, subset(x.Len()), loss)
	fdCheck(t, "ddt", dt, gr.DDt, subset(dt.Len()), loss)
	// dA is small against the loss (most decays vanish), so the rounding
	// error of the differences, about 1e-16·|L|/h, needs a larger step; the
	// stencil's O(h⁴) truncation stays far below it.
	fdCheckStep(t, "dA", A, gr.DA, nil, 1e-4, loss)
	fdCheck(t, "dB", B, gr.DB, subset(B.Len()), loss)
	fdCheck(t, "dC", C, gr.DC, subset(C.Len()), loss)
	fdCheck(t, "dD", D, gr.DD, nil, loss)
}

func TestMambaBackwardShapeErrors(t *testing.T) {
	u, w := New(1, 4, 3), New(3, 4)
	if _, _, _, err := CausalConv1dBackward(New(1, 4, 2), u, w, nil, true); err == nil {
		t.Error("conv backward: dout of the wrong shape: no error")
	}
	if _, _, _, err := CausalConv1dBackward(New(1, 4, 3), u, New(2, 4), nil, true); err == nil {
		t.Error("conv backward: weight of the wrong shape: no error")
	}
	if _, _, err := DtSoftplusBackward(New(2, 3), New(2, 3), New(2)); err == nil {
		t.Error("dt backward: bias of the wrong shape: no error")
	}
	if _, _, _, err := GatedRMSNormBackward(New(2, 6), New(2, 6), nil, New(6), 4, 1e-5); err == nil {
		t.Error("norm backward: group not dividing: no error")
	}
	x, dt, A, B := New(1, 3, 4, 2), New(1, 3, 4), New(4), New(1, 3, 3, 2)
	if _, err := SSDBackward(New(1, 3, 4, 2), x, dt, A, B, B, nil); err == nil {
		t.Error("ssd backward: heads not a multiple of groups: no error")
	}
	B2 := New(1, 3, 2, 2)
	if _, err := SSDBackward(New(1, 3, 4, 1), x, dt, A, B2, B2, nil); err == nil {
		t.Error("ssd backward: dy of the wrong shape: no error")
	}
}
