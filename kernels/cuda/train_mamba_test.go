package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// TestMambaGradConformance runs the shared MambaGrad suite (float64
// backward references of package reference) at the backend's tolerances.
func TestMambaGradConformance(t *testing.T) {
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	conformance.RunMambaGrad(t, func() kernels.Backend {
		be, err := New(0)
		if err != nil {
			t.Fatalf("New(0): %v", err)
		}
		return be
	}, tolerances())
}

// Further tests of the CUDA MambaGrad against float64 loops written here from
// SPEC §3 (the recurrent backward; the convolution, softplus and gated
// norm backward by the chain rule). The scan's float64 backward is itself
// checked against central differences of the float64 forward.

// scanShape is one scan: batch nb, seqlen l, h heads of headdim p, g
// groups of d_state n.
type scanShape struct{ nb, l, h, p, g, n int }

// scanRef holds the float64 operands of a scan and its gradients.
type scanRef struct {
	x, dt, A, B, C, D, dy         []float64
	dx, ddt, dA, dB, dC, dD, yOut []float64
	da                            []float64 // ∂L/∂a_t, a_t = dt_t·A: [b, l, h]
}

// forward runs the recurrence in float64 and returns y (and, when keep is
// set, every state: S[(b·h + head)·(l+1) + t+1] is the state after token
// t, S[…0] the zero initial one).
func (sh scanShape) forward(r *scanRef, keep bool) ([]float64, [][]float64) {
	y := make([]float64, sh.nb*sh.l*sh.h*sh.p)
	var states [][]float64
	rep := sh.h / sh.g
	for b := range sh.nb {
		for hh := range sh.h {
			g := hh / rep
			S := make([]float64, sh.p*sh.n)
			if keep {
				states = append(states, slices.Clone(S))
			}
			var d float64
			if r.D != nil {
				d = r.D[hh]
			}
			for t := range sh.l {
				bt := b*sh.l + t
				dtv := r.dt[bt*sh.h+hh]
				e := math.Exp(dtv * r.A[hh])
				xo, bo := (bt*sh.h+hh)*sh.p, (bt*sh.g+g)*sh.n
				for i := range sh.p {
					var acc float64
					for j := range sh.n {
						S[i*sh.n+j] = e*S[i*sh.n+j] + dtv*r.x[xo+i]*r.B[bo+j]
						acc += S[i*sh.n+j] * r.C[bo+j]
					}
					y[xo+i] = acc + d*r.x[xo+i]
				}
				if keep {
					states = append(states, slices.Clone(S))
				}
			}
		}
	}
	return y, states
}

// backward fills the gradients by the recurrent form (SPEC §3), walking t
// from last to first with G = ∂L/∂S_t.
func (sh scanShape) backward(r *scanRef) {
	_, states := sh.forward(r, true)
	r.dx = make([]float64, len(r.x))
	r.ddt = make([]float64, len(r.dt))
	r.dA = make([]float64, sh.h)
	r.dB = make([]float64, len(r.B))
	r.dC = make([]float64, len(r.C))
	r.dD = make([]float64, sh.h)
	r.da = make([]float64, len(r.dt))
	rep := sh.h / sh.g
	for b := range sh.nb {
		for hh := range sh.h {
			g := hh / rep
			base := (b*sh.h + hh) * (sh.l + 1)
			G := make([]float64, sh.p*sh.n)
			var d float64
			if r.D != nil {
				d = r.D[hh]
			}
			for t := sh.l - 1; t >= 0; t-- {
				St, Sp := states[base+t+1], states[base+t]
				bt := b*sh.l + t
				dtv := r.dt[bt*sh.h+hh]
				e := math.Exp(dtv * r.A[hh])
				xo, bo := (bt*sh.h+hh)*sh.p, (bt*sh.g+g)*sh.n
				var dot, dtx float64
				for i := range sh.p {
					gy, xv := r.dy[xo+i], r.x[xo+i]
					var dxb float64
					for j := range sh.n {
						k := i*sh.n + j
						G[k] += gy * r.C[bo+j]
						r.dC[bo+j] += St[k] * gy
						dxb += G[k] * r.B[bo+j]
						r.dB[bo+j] += G[k] * dtv * xv
						dot += G[k] * Sp[k]
					}
					r.dx[xo+i] = dtv*dxb + d*gy
					dtx += dxb * xv
					r.dD[hh] += gy * xv
				}
				da := e * dot
				for k := range G {
					G[k] *= e
				}
				r.ddt[bt*sh.h+hh] = r.A[hh]*da + dtx
				r.da[bt*sh.h+hh] = da
				r.dA[hh] += dtv * da
			}
		}
	}
}

// uniform draws n values in [lo, hi) that float32 (or, when bf16, bf16)
// represents exactly.
func uniform(rng *rand.Rand, n int, lo, hi float64, bf16 bool) []float64 {
	v := make([]float64, n)
	for i := range v {
		f := lo + (hi-lo)*rng.Float64()
		if bf16 {
			v[i] = reference.BF16Value(reference.BF16Bits(f))
		} else {
			v[i] = float64(float32(f))
		}
	}
	return v
}

func randomScan(rng *rand.Rand, sh scanShape, bf16, withD bool, dtHi, aLo float64) *scanRef {
	r := &scanRef{
		x:  uniform(rng, sh.nb*sh.l*sh.h*sh.p, -1, 1, bf16),
		dt: uniform(rng, sh.nb*sh.l*sh.h, 0.001, dtHi, false),
		A:  uniform(rng, sh.h, aLo, -0.5, false),
		B:  uniform(rng, sh.nb*sh.l*sh.g*sh.n, -1, 1, bf16),
		C:  uniform(rng, sh.nb*sh.l*sh.g*sh.n, -1, 1, bf16),
		dy: uniform(rng, sh.nb*sh.l*sh.h*sh.p, -1, 1, false),
	}
	if withD {
		r.D = uniform(rng, sh.h, 0.5, 1.5, false)
	}
	return r
}

// TestScanBackwardReference checks the float64 backward of this file
// against central differences of its forward, for L = Σ y·dy.
func TestScanBackwardReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	sh := scanShape{nb: 2, l: 7, h: 4, p: 3, g: 2, n: 2}
	r := randomScan(rng, sh, false, true, 0.5, -3)
	sh.backward(r)
	loss := func() float64 {
		y, _ := sh.forward(r, false)
		var s float64
		for i, v := range y {
			s += v * r.dy[i]
		}
		return s
	}
	for _, c := range []struct {
		name     string
		in, grad []float64
	}{{"x", r.x, r.dx}, {"dt", r.dt, r.ddt}, {"A", r.A, r.dA}, {"B", r.B, r.dB}, {"C", r.C, r.dC}, {"D", r.D, r.dD}} {
		fd := make([]float64, len(c.in))
		for i := range c.in {
			v, eps := c.in[i], 1e-6*max(1, math.Abs(c.in[i]))
			c.in[i] = v + eps
			lp := loss()
			c.in[i] = v - eps
			lm := loss()
			c.in[i] = v
			fd[i] = (lp - lm) / (2 * eps)
		}
		if e := conformance.RelErr(c.grad, fd); !(e < 1e-7) {
			t.Errorf("d%s: float64 backward vs central differences: relative error %.3g", c.name, e)
		}
	}
}

// pickRows takes, from v laid out [b, l, heads, width], the rows of the
// given heads, in that order.
func pickRows(sh scanShape, v []float64, width int, heads []int) []float64 {
	var out []float64
	for row := range sh.nb * sh.l {
		for _, h := range heads {
			out = append(out, v[(row*sh.h+h)*width:(row*sh.h+h+1)*width]...)
		}
	}
	return out
}

// pickHeads is the scan of the given heads alone (groups = heads): its
// shape and operands.
func pickHeads(sh scanShape, r *scanRef, heads []int) (scanShape, *scanRef) {
	one := scanShape{nb: sh.nb, l: sh.l, h: len(heads), p: sh.p, g: len(heads), n: sh.n}
	sub := &scanRef{x: pickRows(sh, r.x, sh.p, heads), dt: pickRows(sh, r.dt, 1, heads), B: pickRows(sh, r.B, sh.n, heads),
		C: pickRows(sh, r.C, sh.n, heads), dy: pickRows(sh, r.dy, sh.p, heads)}
	for _, h := range heads {
		sub.A = append(sub.A, r.A[h])
		sub.D = append(sub.D, r.D[h])
	}
	return one, sub
}

func upload64(t testing.TB, be *Backend, v []float64, dt kernels.DType, shape ...int) kernels.Tensor {
	t.Helper()
	h := make([]float32, len(v))
	for i, f := range v {
		h[i] = float32(f)
	}
	x, err := be.Upload(h, dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Free(x) })
	return x
}

// scanCaseBwd is one SSDChunkScanBackward check.
type scanCaseBwd struct {
	scanShape
	bf16, withD, withdD bool
	dtHi, aLo           float64 // dt in [0.001, dtHi), A in [aLo, −0.5)
	tile                int     // scanBwdTile for the case (0: automatic)
}

func (c scanCaseBwd) String() string {
	s := fmt.Sprintf("b%d_l%d_h%d_p%d_g%d_n%d", c.nb, c.l, c.h, c.p, c.g, c.n)
	if c.bf16 {
		s += "_bf16"
	}
	if c.withD {
		s += "_D"
		if !c.withdD {
			s += "_nodD"
		}
	}
	if c.tile != 0 {
		s += fmt.Sprintf("_tile%d", c.tile)
	}
	return s
}

// TestSSDChunkScanBackward runs the scan backward against the float64
// recurrent backward (tolerance 1e-5, the conformance suite's Scan) on
// f32 and bf16 x/B/C, GQA groups, partial chunks, sizes that are not
// multiples of 4, strong decays (exponents far below 0), every tile
// length, and dA/dD accumulated onto values already there.
func TestSSDChunkScanBackward(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(23, 24))
	const tol = 1e-5
	for _, c := range []scanCaseBwd{
		{scanShape: scanShape{nb: 2, l: 150, h: 4, p: 80, g: 4, n: 80}, withD: true, withdD: true, dtHi: 0.3, aLo: -8},
		{scanShape: scanShape{nb: 1, l: 64, h: 2, p: 16, g: 1, n: 16}, dtHi: 0.3, aLo: -8},
		{scanShape: scanShape{nb: 1, l: 200, h: 4, p: 32, g: 2, n: 64}, bf16: true, withD: true, withdD: true, dtHi: 0.3, aLo: -8},
		{scanShape: scanShape{nb: 3, l: 37, h: 3, p: 6, g: 3, n: 5}, dtHi: 0.3, aLo: -8},
		{scanShape: scanShape{nb: 1, l: 130, h: 2, p: 24, g: 1, n: 20}, bf16: true, withD: true, dtHi: 0.3, aLo: -8},
		{scanShape: scanShape{nb: 1, l: 100, h: 2, p: 8, g: 2, n: 12}, withD: true, withdD: true, dtHi: 2, aLo: -16},
		{scanShape: scanShape{nb: 1, l: 90, h: 2, p: 20, g: 1, n: 16}, withD: true, withdD: true, dtHi: 0.3, aLo: -8, tile: 32},
		{scanShape: scanShape{nb: 2, l: 45, h: 2, p: 12, g: 2, n: 8}, dtHi: 0.3, aLo: -8, tile: 16},
		{scanShape: scanShape{nb: 1, l: 3, h: 1, p: 4, g: 1, n: 4}, withD: true, withdD: true, dtHi: 0.3, aLo: -8},
	} {
		t.Run(c.String(), func(t *testing.T) {
			defer func(saved int) { scanBwdTile = saved }(scanBwdTile)
			scanBwdTile = c.tile
			sh := c.scanShape
			r := randomScan(rng, sh, c.bf16, c.withD, c.dtHi, c.aLo)
			sh.backward(r)
			xdt := kernels.F32
			if c.bf16 {
				xdt = kernels.BF16
			}
			x := upload64(t, be, r.x, xdt, sh.nb, sh.l, sh.h, sh.p)
			dt := upload64(t, be, r.dt, kernels.F32, sh.nb, sh.l, sh.h)
			A := upload64(t, be, r.A, kernels.F32, sh.h)
			B := upload64(t, be, r.B, xdt, sh.nb, sh.l, sh.g, sh.n)
			C := upload64(t, be, r.C, xdt, sh.nb, sh.l, sh.g, sh.n)
			dy := upload64(t, be, r.dy, kernels.F32, sh.nb, sh.l, sh.h, sh.p)
			var D, dD kernels.Tensor
			// dA and dD accumulate: start them from values already there.
			prevA := uniform(rng, sh.h, -1, 1, false)
			prevD := uniform(rng, sh.h, -1, 1, false)
			dA := upload64(t, be, prevA, kernels.F32, sh.h)
			if c.withD {
				D = upload64(t, be, r.D, kernels.F32, sh.h)
				if c.withdD {
					dD = upload64(t, be, prevD, kernels.F32, sh.h)
				}
			}
			dx, ddt := poisoned(t, be, sh.nb, sh.l, sh.h, sh.p), poisoned(t, be, sh.nb, sh.l, sh.h)
			dB, dC := poisoned(t, be, sh.nb, sh.l, sh.g, sh.n), poisoned(t, be, sh.nb, sh.l, sh.g, sh.n)
			if err := be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, D, 64); err != nil {
				t.Fatal(err)
			}
			plus := func(prev, grad []float64) []float64 {
				out := make([]float64, len(grad))
				for i := range grad {
					out[i] = float64(float32(prev[i])) + grad[i]
				}
				return out
			}
			checks := []struct {
				name string
				got  kernels.Tensor
				want []float64
			}{{"dx", dx, r.dx}, {"ddt", ddt, r.ddt}, {"dB", dB, r.dB}, {"dC", dC, r.dC}, {"dA", dA, plus(prevA, r.dA)}}
			if dD != nil {
				checks = append(checks, struct {
					name string
					got  kernels.Tensor
					want []float64
				}{"dD", dD, plus(prevD, r.dD)})
			}
			for _, k := range checks {
				if e := conformance.RelErr(download(t, be, k.got), k.want); !(e <= tol) {
					t.Errorf("%s: relative error %.3g > %.3g", k.name, e, tol)
				} else {
					t.Logf("%s: relative error %.3g", k.name, e)
				}
			}
		})
	}
}

// TestScanBackwardCancellingDA: at the training size (1428 tokens, heads
// of 80, d_state 80, dt in [0.001, 0.1), A in [−16, −1)) dA of a head can
// be hundreds of times smaller than Σ_t |dt·da_t|; these two heads (of the
// 32 drawn by the benchmark's seed) cancel 397× and 226×. With float32 dot
// products in C·Bᵀ and gy·xᵀ the H200 missed 1e-5 on them (1.8e-5).
func TestScanBackwardCancellingDA(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(41, 42))
	full := scanShape{nb: 1, l: 1428, h: 32, p: 80, g: 32, n: 80}
	sh, r := pickHeads(full, randomScan(rng, full, false, true, 0.1, -16), []int{0, 31})
	sh.backward(r)
	for k := range sh.h {
		var sum float64
		for i := k; i < len(r.da); i += sh.h {
			sum += math.Abs(r.dt[i] * r.da[i])
		}
		if ratio := sum / math.Abs(r.dA[k]); ratio < 100 {
			t.Fatalf("head %d: Σ|dt·da| / |dA| = %.3g: the case no longer cancels", k, ratio)
		}
	}
	up := func(v []float64, shape ...int) kernels.Tensor { return upload64(t, be, v, kernels.F32, shape...) }
	dA, dD := up(make([]float64, sh.h), sh.h), up(make([]float64, sh.h), sh.h)
	dx, ddt := poisoned(t, be, sh.nb, sh.l, sh.h, sh.p), poisoned(t, be, sh.nb, sh.l, sh.h)
	dB, dC := poisoned(t, be, sh.nb, sh.l, sh.g, sh.n), poisoned(t, be, sh.nb, sh.l, sh.g, sh.n)
	err := be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, up(r.dy, sh.nb, sh.l, sh.h, sh.p), up(r.x, sh.nb, sh.l, sh.h, sh.p),
		up(r.dt, sh.nb, sh.l, sh.h), up(r.A, sh.h), up(r.B, sh.nb, sh.l, sh.g, sh.n), up(r.C, sh.nb, sh.l, sh.g, sh.n), up(r.D, sh.h), 64)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct {
		name string
		got  kernels.Tensor
		want []float64
	}{{"dA", dA, r.dA}, {"ddt", ddt, r.ddt}, {"dx", dx, r.dx}, {"dB", dB, r.dB}, {"dC", dC, r.dC}, {"dD", dD, r.dD}} {
		if e := conformance.RelErr(download(t, be, k.got), k.want); !(e <= 1e-5) {
			t.Errorf("%s: relative error %.3g > 1e-5", k.name, e)
		} else {
			t.Logf("%s: relative error %.3g", k.name, e)
		}
	}
}

// TestScanBackwardDeterministic: the same call twice gives the same bits.
func TestScanBackwardDeterministic(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(25, 26))
	sh := scanShape{nb: 2, l: 100, h: 4, p: 16, g: 2, n: 16}
	r := randomScan(rng, sh, false, true, 0.3, -8)
	x := upload64(t, be, r.x, kernels.F32, sh.nb, sh.l, sh.h, sh.p)
	dt := upload64(t, be, r.dt, kernels.F32, sh.nb, sh.l, sh.h)
	A := upload64(t, be, r.A, kernels.F32, sh.h)
	B := upload64(t, be, r.B, kernels.F32, sh.nb, sh.l, sh.g, sh.n)
	C := upload64(t, be, r.C, kernels.F32, sh.nb, sh.l, sh.g, sh.n)
	D := upload64(t, be, r.D, kernels.F32, sh.h)
	dy := upload64(t, be, r.dy, kernels.F32, sh.nb, sh.l, sh.h, sh.p)
	run := func() [][]float32 {
		dx, ddt := poisoned(t, be, sh.nb, sh.l, sh.h, sh.p), poisoned(t, be, sh.nb, sh.l, sh.h)
		dB, dC := poisoned(t, be, sh.nb, sh.l, sh.g, sh.n), poisoned(t, be, sh.nb, sh.l, sh.g, sh.n)
		dA := upload64(t, be, make([]float64, sh.h), kernels.F32, sh.h)
		dD := upload64(t, be, make([]float64, sh.h), kernels.F32, sh.h)
		if err := be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, D, 64); err != nil {
			t.Fatal(err)
		}
		var out [][]float32
		for _, g := range []kernels.Tensor{dx, ddt, dA, dB, dC, dD} {
			h, err := be.Download(g)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, h)
		}
		return out
	}
	first, second := run(), run()
	for i, name := range []string{"dx", "ddt", "dA", "dB", "dC", "dD"} {
		for j := range first[i] {
			if math.Float32bits(first[i][j]) != math.Float32bits(second[i][j]) {
				t.Fatalf("%s[%d]: %g then %g", name, j, first[i][j], second[i][j])
			}
		}
	}
}

// convRef is the float64 backward of CausalConv1d.
func convRef(nb, l, c, k int, u, w, bias, dout []float64, silu bool) (du, dw, db []float64) {
	du, dw, db = make([]float64, len(u)), make([]float64, c*k), make([]float64, c)
	dpre := make([]float64, len(u))
	for b := range nb {
		for t := range l {
			for ch := range c {
				var pre float64
				if bias != nil {
					pre = bias[ch]
				}
				for j := range k {
					if ts := t - k + 1 + j; ts >= 0 {
						pre += w[ch*k+j] * u[(b*l+ts)*c+ch]
					}
				}
				g := dout[(b*l+t)*c+ch]
				if silu {
					s := 1 / (1 + math.Exp(-pre))
					g *= s * (1 + pre*(1-s))
				}
				dpre[(b*l+t)*c+ch] = g
			}
		}
	}
	for b := range nb {
		for t := range l {
			for ch := range c {
				g := dpre[(b*l+t)*c+ch]
				db[ch] += g
				for j := range k {
					if ts := t - k + 1 + j; ts >= 0 {
						dw[ch*k+j] += g * u[(b*l+ts)*c+ch]
						du[(b*l+ts)*c+ch] += g * w[ch*k+j]
					}
				}
			}
		}
	}
	return du, dw, db
}

// TestCausalConv1dBackward: du and the accumulated weight and bias
// gradients against float64, with and without SiLU, bias, dweight and
// dbias, kernel widths 1, 3, 4 and 9 (the recomputing path), sequences
// shorter than the kernel and several token segments a channel.
func TestCausalConv1dBackward(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(27, 28))
	const tol = 1e-6
	for _, c := range []struct {
		nb, l, ch, k               int
		silu, bias, withDW, withDB bool
	}{
		{2, 100, 40, 4, true, true, true, true},
		{1, 37, 10, 4, false, true, true, true},
		{2, 70, 33, 3, true, false, true, true},
		{1, 2, 5, 4, true, true, true, false},
		{3, 50, 7, 1, true, true, false, true},
		{1, 80, 6, 9, true, true, true, true},
		{1, 45, 9, 4, true, true, false, false},
	} {
		t.Run(fmt.Sprintf("b%d_l%d_c%d_k%d_silu%v_bias%v_dw%v_db%v", c.nb, c.l, c.ch, c.k, c.silu, c.bias, c.withDW, c.withDB), func(t *testing.T) {
			n := c.nb * c.l * c.ch
			u := uniform(rng, n, -2, 2, false)
			dout := uniform(rng, n, -1, 1, false)
			w := uniform(rng, c.ch*c.k, -0.5, 0.5, false)
			var bias []float64
			var bt kernels.Tensor
			if c.bias {
				bias = uniform(rng, c.ch, -0.5, 0.5, false)
				bt = upload64(t, be, bias, kernels.F32, c.ch)
			}
			wantDU, wantDW, wantDB := convRef(c.nb, c.l, c.ch, c.k, u, w, bias, dout, c.silu)
			prevW, prevB := uniform(rng, c.ch*c.k, -1, 1, false), uniform(rng, c.ch, -1, 1, false)
			var dw, db kernels.Tensor
			if c.withDW {
				dw = upload64(t, be, prevW, kernels.F32, c.ch, c.k)
			}
			if c.withDB {
				db = upload64(t, be, prevB, kernels.F32, c.ch)
			}
			du := poisoned(t, be, c.nb, c.l, c.ch)
			err := be.CausalConv1dBackward(du, dw, db, upload64(t, be, dout, kernels.F32, c.nb, c.l, c.ch),
				upload64(t, be, u, kernels.F32, c.nb, c.l, c.ch), upload64(t, be, w, kernels.F32, c.ch, c.k), bt, c.silu)
			if err != nil {
				t.Fatal(err)
			}
			if e := conformance.RelErr(download(t, be, du), wantDU); !(e <= tol) {
				t.Errorf("du: relative error %.3g", e)
			}
			for _, k := range []struct {
				name       string
				got        kernels.Tensor
				prev, want []float64
			}{{"dweight", dw, prevW, wantDW}, {"dbias", db, prevB, wantDB}} {
				if k.got == nil {
					continue
				}
				want := make([]float64, len(k.want))
				for i := range want {
					want[i] = float64(float32(k.prev[i])) + k.want[i]
				}
				if e := conformance.RelErr(download(t, be, k.got), want); !(e <= tol) {
					t.Errorf("%s: relative error %.3g", k.name, e)
				}
			}
		})
	}
}

// TestDtSoftplusBackward: dRaw and the accumulated bias gradient, with and
// without bias and dbias, in place over ddt.
func TestDtSoftplusBackward(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(29, 30))
	for _, c := range []struct {
		rows, h           int
		bias, db, inPlace bool
	}{{300, 8, true, true, false}, {37, 3, false, true, false}, {50, 5, true, false, true}, {1, 32, true, true, false}} {
		t.Run(fmt.Sprintf("r%d_h%d_bias%v_db%v_inplace%v", c.rows, c.h, c.bias, c.db, c.inPlace), func(t *testing.T) {
			raw := uniform(rng, c.rows*c.h, -8, 25, false)
			ddt := uniform(rng, c.rows*c.h, -1, 1, false)
			var bias []float64
			var bt, dbt kernels.Tensor
			if c.bias {
				bias = uniform(rng, c.h, -3, 3, false)
				bt = upload64(t, be, bias, kernels.F32, c.h)
			}
			prev := uniform(rng, c.h, -1, 1, false)
			if c.db {
				dbt = upload64(t, be, prev, kernels.F32, c.h)
			}
			want, wantDB := make([]float64, len(raw)), make([]float64, c.h)
			for i, v := range raw {
				if bias != nil {
					v += bias[i%c.h]
				}
				want[i] = ddt[i] / (1 + math.Exp(-v))
				wantDB[i%c.h] += want[i]
			}
			ddtT := upload64(t, be, ddt, kernels.F32, c.rows, c.h)
			out := ddtT
			if !c.inPlace {
				out = poisoned(t, be, c.rows, c.h)
			}
			if err := be.DtSoftplusBackward(out, dbt, ddtT, upload64(t, be, raw, kernels.F32, c.rows, c.h), bt); err != nil {
				t.Fatal(err)
			}
			if e := conformance.RelErr(download(t, be, out), want); !(e <= 1e-7) {
				t.Errorf("dRaw: relative error %.3g", e)
			}
			if c.db {
				for i := range wantDB {
					wantDB[i] += float64(float32(prev[i]))
				}
				if e := conformance.RelErr(download(t, be, dbt), wantDB); !(e <= 1e-6) {
					t.Errorf("dbias: relative error %.3g", e)
				}
			}
		})
	}
}

// TestGatedRMSNormBackward: dy, dz and the accumulated weight gradient
// against float64, with and without the gate and dweight, groups of 80,
// of 7 and of 300 (several column chunks a group), and enough rows for
// blocks of several rows.
func TestGatedRMSNormBackward(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(31, 32))
	const eps = 1e-5
	for _, c := range []struct {
		rows, width, gs int
		gate, dw        bool
	}{{50, 160, 80, true, true}, {33, 21, 7, true, true}, {9, 600, 300, true, true}, {40, 64, 16, false, true}, {20, 80, 80, true, false}} {
		t.Run(fmt.Sprintf("r%d_w%d_g%d_gate%v_dw%v", c.rows, c.width, c.gs, c.gate, c.dw), func(t *testing.T) {
			n := c.rows * c.width
			y, dout := uniform(rng, n, -2, 2, false), uniform(rng, n, -1, 1, false)
			w := uniform(rng, c.width, 0.5, 1.5, false)
			var z []float64
			var zt, dzt kernels.Tensor
			if c.gate {
				z = uniform(rng, n, -3, 3, false)
				zt = upload64(t, be, z, kernels.F32, c.rows, c.width)
				dzt = poisoned(t, be, c.rows, c.width)
			}
			prev := uniform(rng, c.width, -1, 1, false)
			var dwt kernels.Tensor
			if c.dw {
				dwt = upload64(t, be, prev, kernels.F32, c.width)
			}
			wantDY, wantDZ, wantDW := make([]float64, n), make([]float64, n), make([]float64, c.width)
			for i := range wantDW {
				wantDW[i] = float64(float32(prev[i]))
			}
			for r := range c.rows {
				for k := range c.width / c.gs {
					o := r*c.width + k*c.gs
					g := make([]float64, c.gs)
					var ss, sgw float64
					for j := range g {
						g[j] = y[o+j]
						if z != nil {
							g[j] *= z[o+j] / (1 + math.Exp(-z[o+j]))
						}
						ss += g[j] * g[j]
						sgw += dout[o+j] * w[k*c.gs+j] * g[j]
					}
					rs := 1 / math.Sqrt(ss/float64(c.gs)+eps)
					cc := rs * rs * rs * sgw / float64(c.gs)
					for j := range g {
						dg := rs*dout[o+j]*w[k*c.gs+j] - cc*g[j]
						wantDW[k*c.gs+j] += dout[o+j] * g[j] * rs
						if z == nil {
							wantDY[o+j] = dg
							continue
						}
						s := 1 / (1 + math.Exp(-z[o+j]))
						wantDY[o+j] = dg * z[o+j] * s
						wantDZ[o+j] = dg * y[o+j] * s * (1 + z[o+j]*(1-s))
					}
				}
			}
			dy := poisoned(t, be, c.rows, c.width)
			err := be.GatedRMSNormBackward(dy, dzt, dwt, upload64(t, be, dout, kernels.F32, c.rows, c.width),
				upload64(t, be, y, kernels.F32, c.rows, c.width), zt, upload64(t, be, w, kernels.F32, c.width), c.gs, eps)
			if err != nil {
				t.Fatal(err)
			}
			if e := conformance.RelErr(download(t, be, dy), wantDY); !(e <= 1e-6) {
				t.Errorf("dy: relative error %.3g", e)
			}
			if c.gate {
				if e := conformance.RelErr(download(t, be, dzt), wantDZ); !(e <= 1e-6) {
					t.Errorf("dz: relative error %.3g", e)
				}
			}
			if c.dw {
				if e := conformance.RelErr(download(t, be, dwt), wantDW); !(e <= 1e-6) {
					t.Errorf("dweight: relative error %.3g", e)
				}
			}
		})
	}
}

// TestMambaGradErrors: bad operands are errors naming the operation and
// the operand, never panics, and nothing is written.
func TestMambaGradErrors(t *testing.T) {
	be := testBackend(t)
	f := func(shape ...int) kernels.Tensor { return poisoned(t, be, shape...) }
	x, dt, A, B, C, D, dy := f(1, 8, 2, 4), f(1, 8, 2), f(2), f(1, 8, 1, 4), f(1, 8, 1, 4), f(2), f(1, 8, 2, 4)
	dx, ddt, dA, dB, dC, dD := f(1, 8, 2, 4), f(1, 8, 2), f(2), f(1, 8, 1, 4), f(1, 8, 1, 4), f(2)
	bf, err := be.Upload(make([]float32, 2), kernels.BF16, 2)
	if err != nil {
		t.Fatal(err)
	}
	u, w, cb, du := f(1, 8, 3), f(3, 4), f(3), f(1, 8, 3)
	y, z, nw := f(4, 8), f(4, 8), f(8)
	for _, c := range []struct {
		name, want string
		call       func() error
	}{
		{"scan chunk 0", "chunk", func() error { return be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, D, 0) }},
		{"scan dD without D", "dD", func() error { return be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, nil, 64) }},
		{"scan dx shape", "dx", func() error { return be.SSDChunkScanBackward(ddt, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, D, 64) }},
		{"scan dy shape", "dy", func() error { return be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, ddt, x, dt, A, B, C, D, 64) }},
		{"scan groups", "groups", func() error {
			return be.SSDChunkScanBackward(dx, ddt, dA, f(1, 8, 3, 4), f(1, 8, 3, 4), dD, dy, x, dt, A, f(1, 8, 3, 4), f(1, 8, 3, 4), D, 64)
		}},
		{"scan alias", "share", func() error { return be.SSDChunkScanBackward(dx, ddt, dA, dB, dC, dD, dy, x, dt, A, dB, C, D, 64) }},
		{"scan outputs alias", "share", func() error { return be.SSDChunkScanBackward(dx, ddt, dA, dB, dB, dD, dy, x, dt, A, B, C, D, 64) }},
		{"scan bf16 dA", "dA", func() error { return be.SSDChunkScanBackward(dx, ddt, bf, dB, dC, dD, dy, x, dt, A, B, C, D, 64) }},
		{"scan nil dx", "dx", func() error { return be.SSDChunkScanBackward(nil, ddt, dA, dB, dC, dD, dy, x, dt, A, B, C, D, 64) }},
		{"conv weight", "weight", func() error { return be.CausalConv1dBackward(du, nil, nil, du, u, f(4, 4), nil, true) }},
		{"conv dweight", "dweight", func() error { return be.CausalConv1dBackward(du, f(3, 3), nil, du, u, w, cb, true) }},
		{"conv alias", "share", func() error { return be.CausalConv1dBackward(u, nil, nil, f(1, 8, 3), u, w, cb, true) }},
		{"conv rank", "u", func() error { return be.CausalConv1dBackward(du, nil, nil, du, f(8, 3), w, cb, true) }},
		{"dt bias", "bias", func() error { return be.DtSoftplusBackward(dt, nil, f(1, 8, 2), f(1, 8, 2), f(3)) }},
		{"dt dbias alias", "share", func() error { d := f(1, 8, 2); return be.DtSoftplusBackward(f(1, 8, 2), A, d, d, A) }},
		{"norm group", "group", func() error { return be.GatedRMSNormBackward(f(4, 8), f(4, 8), nil, f(4, 8), y, z, nw, 3, 1e-5) }},
		{"norm dz without z", "dz", func() error { return be.GatedRMSNormBackward(f(4, 8), f(4, 8), nil, f(4, 8), y, nil, nw, 4, 1e-5) }},
		{"norm eps", "eps", func() error { return be.GatedRMSNormBackward(f(4, 8), f(4, 8), nil, f(4, 8), y, z, nw, 4, -1) }},
		{"norm alias", "share", func() error { return be.GatedRMSNormBackward(y, f(4, 8), nil, f(4, 8), y, z, nw, 4, 1e-5) }},
	} {
		err := c.call()
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "backward") {
			t.Errorf("%s: error %q does not name %q and the operation", c.name, err, c.want)
		}
	}
	// Nothing was written to the outputs of the failed calls.
	for _, o := range []kernels.Tensor{dx, ddt, dA, dB, dC, dD, du} {
		for _, v := range download(t, be, o) {
			if !math.IsNaN(v) {
				t.Fatalf("a failed call wrote %g", v)
			}
		}
	}
}

// TestScanBackwardLayout compares the scan kernels' shared-memory layouts
// (SB_END, CS_END in train_mamba_scan.cu) with the sizes the launches ask
// for (scanBwdShared, chunkStatesShared).
func TestScanBackwardLayout(t *testing.T) {
	be := testBackend(t)
	out := poisoned(t, be, 2).(*Tensor)
	for _, c := range []struct{ q, p, n int }{{64, 80, 80}, {32, 6, 5}, {16, 128, 64}, {4, 1, 1}, {64, 16, 256}} {
		pl := scanBwdPlan{q: c.q, p: c.p, n: c.n, t: 64, t1: 64}
		err := be.do("layout", func() error {
			f, err := be.kernel("train_mamba_scan", "k_mamba_scan_layout", pl.defines()...)
			if err != nil {
				return err
			}
			return be.launch("layout", f, dims{1, 1, 1}, dims{32, 1, 1}, 0, out)
		})
		if err != nil {
			t.Fatal(err)
		}
		h, err := be.Download(out)
		if err != nil {
			t.Fatal(err)
		}
		gotSB, gotCS := int(int32(math.Float32bits(h[0]))), int(int32(math.Float32bits(h[1])))
		if 4*gotSB != scanBwdShared(c.q, c.p, c.n) || 4*gotCS != chunkStatesShared(c.q, c.p, c.n) {
			t.Errorf("%+v: kernels use %d and %d bytes, the launches give %d and %d", c, 4*gotSB, 4*gotCS,
				scanBwdShared(c.q, c.p, c.n), chunkStatesShared(c.q, c.p, c.n))
		}
	}
}
