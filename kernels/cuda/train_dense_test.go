package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/conformance"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// Tests of the dense family of kernels.Trainer against float64 loops
// written here, on fresh seeded inputs (never zeros). They run on a GPU,
// or on the CPU emulator of testdata/emu (logic, not speed).

// checkRel fails when the relative error of got against want exceeds tol
// (a NaN or unwritten element gives +Inf).
func checkRel(t *testing.T, what string, got, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	if e := conformance.RelErr(got, want); !(e <= tol) {
		t.Errorf("%s: relative error %.3g > %.3g", what, e, tol)
	} else {
		t.Logf("%s: relative error %.3g", what, e)
	}
}

// checkExact fails unless got equals want element for element.
func checkExact(t *testing.T, what string, got, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%s: element %d = %g, want %g", what, i, got[i], want[i])
			return
		}
	}
}

func f32Round(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(float32(x))
	}
	return out
}

func TestMatMulAT(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(11, 12))
	for _, c := range []struct {
		aShape, bShape []int
		adt, bdt       kernels.DType
	}{
		{[]int{37, 19}, []int{37, 23}, kernels.F32, kernels.F32},
		{[]int{3, 50, 40}, []int{150, 33}, kernels.F32, kernels.F32}, // leading dimensions flattened
		{[]int{64, 48}, []int{64, 80}, kernels.BF16, kernels.BF16},
		{[]int{29, 17}, []int{29, 31}, kernels.BF16, kernels.F32},
		{[]int{29, 17}, []int{29, 31}, kernels.F32, kernels.BF16},
	} {
		name := fmt.Sprintf("a%v_%v_b%v_%v", c.aShape, c.adt, c.bShape, c.bdt)
		t.Run(name, func(t *testing.T) {
			up := func(dt kernels.DType, shape []int) (*reference.Array, kernels.Tensor) {
				if dt == kernels.BF16 {
					return bf16Array(t, be, rng, -1, 1, shape...)
				}
				return f32Array(t, be, rng, -1, 1, shape...)
			}
			a, at := up(c.adt, c.aShape)
			b, bt := up(c.bdt, c.bShape)
			m, n := c.aShape[len(c.aShape)-1], c.bShape[len(c.bShape)-1]
			k := a.Len() / m
			want := make([]float64, m*n)
			for r := range k {
				for i := range m {
					for j := range n {
						want[i*n+j] += a.Data[r*m+i] * b.Data[r*n+j]
					}
				}
			}
			out := poisoned(t, be, m, n)
			if err := be.MatMulAT(out, at, bt, false); err != nil {
				t.Fatal(err)
			}
			checkRel(t, "written", download(t, be, out), want, 1e-6)
			prev, prevT := f32Array(t, be, rng, -1, 1, m, n)
			if err := be.MatMulAT(prevT, at, bt, true); err != nil {
				t.Fatal(err)
			}
			for i := range want {
				want[i] += prev.Data[i]
			}
			checkRel(t, "accumulated", download(t, be, prevT), want, 1e-6)
		})
	}
}

func TestSumRows(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(13, 14))
	for _, shape := range [][]int{{7, 5}, {2, 150, 70}, {1000, 3}, {64, 300}} {
		a, at := f32Array(t, be, rng, -1, 1, shape...)
		n := shape[len(shape)-1]
		want := make([]float64, n)
		for i, v := range a.Data {
			want[i%n] += v
		}
		out := poisoned(t, be, n)
		if err := be.SumRows(out, at, false); err != nil {
			t.Fatal(err)
		}
		got := download(t, be, out)
		checkRel(t, fmt.Sprintf("%v written", shape), got, want, 1e-7)
		// The same call again gives the same bits (a fixed order of sums).
		again := poisoned(t, be, n)
		if err := be.SumRows(again, at, false); err != nil {
			t.Fatal(err)
		}
		checkExact(t, fmt.Sprintf("%v repeated", shape), download(t, be, again), got)
		prev, prevT := f32Array(t, be, rng, -1, 1, n)
		if err := be.SumRows(prevT, at, true); err != nil {
			t.Fatal(err)
		}
		for i := range want {
			want[i] += prev.Data[i]
		}
		checkRel(t, fmt.Sprintf("%v accumulated", shape), download(t, be, prevT), want, 1e-7)
	}
	if rowsPer, chunks := sumRowsChunks(11424, 2560); chunks < 2 || rowsPer*chunks < 11424 {
		t.Errorf("sumRowsChunks(11424, 2560) = %d rows × %d chunks", rowsPer, chunks)
	}
}

func TestActivationBackward(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(15, 16))
	x, xt := f32Array(t, be, rng, -6, 6, 3, 7, 41)
	dy, dyt := f32Array(t, be, rng, -2, 2, 3, 7, 41)
	erfGrad := func(v float64) float64 {
		return 0.5*(1+math.Erf(v/math.Sqrt2)) + v*math.Exp(-v*v/2)/math.Sqrt(2*math.Pi)
	}
	tanhGrad := func(v float64) float64 {
		c := math.Sqrt(2 / math.Pi)
		u := c * (v + 0.044715*v*v*v)
		th := math.Tanh(u)
		return 0.5*(1+th) + 0.5*v*(1-th*th)*c*(1+3*0.044715*v*v)
	}
	siluGrad := func(v float64) float64 {
		s := 1 / (1 + math.Exp(-v))
		return s * (1 + v*(1-s))
	}
	for _, c := range []struct {
		name string
		run  func(dx kernels.Tensor) error
		grad func(float64) float64
	}{
		{"gelu erf", func(dx kernels.Tensor) error { return be.GELUBackward(dx, dyt, xt, kernels.GELUErf) }, erfGrad},
		{"gelu tanh", func(dx kernels.Tensor) error { return be.GELUBackward(dx, dyt, xt, kernels.GELUTanh) }, tanhGrad},
		{"silu", func(dx kernels.Tensor) error { return be.SiLUBackward(dx, dyt, xt) }, siluGrad},
	} {
		want := make([]float64, x.Len())
		for i, v := range x.Data {
			want[i] = dy.Data[i] * c.grad(v)
		}
		dx := poisoned(t, be, 3, 7, 41)
		if err := c.run(dx); err != nil {
			t.Fatal(err)
		}
		checkRel(t, c.name, download(t, be, dx), want, 1e-7)
	}
	// Against a central difference of the forward pass (an independent
	// check of the formulas above), in float64 on the host.
	for _, c := range []struct {
		name string
		f    func(float64) float64
		grad func(float64) float64
	}{{"gelu erf", reference.GELUErfValue, erfGrad}, {"gelu tanh", reference.GELUTanhValue, tanhGrad}, {"silu", reference.SiLUValue, siluGrad}} {
		for _, v := range []float64{-4.5, -1.3, -0.2, 0.7, 2.9} {
			const h = 1e-5
			fd := (c.f(v+h) - c.f(v-h)) / (2 * h)
			if math.Abs(fd-c.grad(v)) > 1e-8 {
				t.Errorf("%s'(%g) = %g, central difference %g", c.name, v, c.grad(v), fd)
			}
		}
	}
	if err := be.GELUBackward(poisoned(t, be, 3, 7, 41), dyt, xt, kernels.GELUForm(9)); err == nil {
		t.Error("GELUBackward with an unknown form: no error")
	}
}

// normJacobianGrad returns dx = Jᵀ·dy of out = norm(x)·w row by row, the
// Jacobian J of the normalisation built entry by entry in float64 (an
// independent route from the kernels' closed form).
func normJacobianGrad(x, dy, w []float64, n int, eps float64, layer bool) []float64 {
	dx := make([]float64, len(x))
	for r := 0; r < len(x)/n; r++ {
		xr, gr := x[r*n:(r+1)*n], dy[r*n:(r+1)*n]
		var mean float64
		if layer {
			for _, v := range xr {
				mean += v
			}
			mean /= float64(n)
		}
		var ss float64
		for _, v := range xr {
			ss += (v - mean) * (v - mean)
		}
		inv := 1 / math.Sqrt(ss/float64(n)+eps)
		for i := range n { // ∂out_j/∂x_i
			var acc float64
			for j := range n {
				var d float64
				if i == j {
					d = inv
				}
				if layer {
					d -= inv / float64(n)
				}
				// ∂inv/∂x_i = −inv³·(x_i − mean)/n (the mean's own terms cancel)
				d += (xr[j] - mean) * (-inv * inv * inv * (xr[i] - mean) / float64(n))
				acc += gr[j] * w[j] * d
			}
			dx[r*n+i] = acc
		}
	}
	return dx
}

func TestNormBackward(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(17, 18))
	for _, layer := range []bool{true, false} {
		for _, n := range []int{80, 300, 1000} {
			const eps = 1e-5
			x, xt := f32Array(t, be, rng, -2, 3, 2, 3, n)
			dy, dyt := f32Array(t, be, rng, -1, 1, 2, 3, n)
			w, wt := f32Array(t, be, rng, 0.5, 1.5, n)
			want := normJacobianGrad(x.Data, dy.Data, w.Data, n, eps, layer)
			run := func(dx, dy kernels.Tensor) error {
				if layer {
					return be.LayerNormBackward(dx, dy, xt, wt, eps)
				}
				return be.RMSNormBackward(dx, dy, xt, wt, eps)
			}
			name := fmt.Sprintf("layer=%v n=%d", layer, n)
			dx := poisoned(t, be, 2, 3, n)
			if err := run(dx, dyt); err != nil {
				t.Fatal(err)
			}
			checkRel(t, name, download(t, be, dx), want, 1e-6)
			// In place: dx = dy.
			if err := run(dyt, dyt); err != nil {
				t.Fatal(err)
			}
			checkRel(t, name+" in place", download(t, be, dyt), want, 1e-6)
		}
	}
	x, xt := f32Array(t, be, rng, -1, 1, 4, 8)
	_ = x
	if err := be.LayerNormBackward(poisoned(t, be, 4, 8), xt, xt, poisoned(t, be, 7), 1e-5); err == nil {
		t.Error("LayerNormBackward with a weight of the wrong size: no error")
	}
	if err := be.RMSNormBackward(poisoned(t, be, 4, 8), xt, xt, poisoned(t, be, 8), float32(math.NaN())); err == nil {
		t.Error("RMSNormBackward with eps NaN: no error")
	}
}

func TestRoPEInverse(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(19, 20))
	const rot, theta, pos0 = 32, 10000.0, 5
	x, xt := f32Array(t, be, rng, -1, 1, 2, 9, 3, 80)
	g, gt := f32Array(t, be, rng, -1, 1, 2, 9, 3, 80)
	// Rotation by the negated angles, in float64.
	want := x.Clone()
	for i := 0; i < x.Len(); i += 80 {
		tpos := (i / 80 / 3) % 9
		for d := range rot / 2 {
			ang := -float64(pos0+tpos) * math.Pow(theta, -2*float64(d)/rot)
			c, s := math.Cos(ang), math.Sin(ang)
			x1, x2 := x.Data[i+d], x.Data[i+d+rot/2]
			want.Data[i+d] = x1*c - x2*s
			want.Data[i+d+rot/2] = x2*c + x1*s
		}
	}
	if err := be.RoPEInverse(xt, rot, theta, pos0); err != nil {
		t.Fatal(err)
	}
	checkRel(t, "inverse rotation", download(t, be, xt), want.Data, 1e-7)
	got := download(t, be, xt)
	for i := range got {
		if i%80 >= rot && got[i] != x.Data[i] {
			t.Fatalf("element %d past the rotary dims changed: %g, was %g", i, got[i], x.Data[i])
		}
	}
	// RoPE after RoPEInverse gives x back.
	if err := be.RoPE(xt, rot, theta, pos0); err != nil {
		t.Fatal(err)
	}
	checkRel(t, "RoPE∘RoPEInverse", download(t, be, xt), x.Data, 1e-6)
	// It is RoPE's backward: ⟨RoPE(x), g⟩ = ⟨x, RoPEInverse(g)⟩.
	if err := be.RoPE(xt, rot, theta, pos0); err != nil {
		t.Fatal(err)
	}
	rx := download(t, be, xt)
	if err := be.RoPEInverse(gt, rot, theta, pos0); err != nil {
		t.Fatal(err)
	}
	rg := download(t, be, gt)
	var lhs, rhs, norm float64
	for i := range rx {
		lhs += rx[i] * g.Data[i]
		rhs += x.Data[i] * rg[i]
		norm += math.Abs(x.Data[i] * g.Data[i])
	}
	if math.Abs(lhs-rhs) > 1e-6*norm {
		t.Errorf("⟨RoPE(x), g⟩ = %g, ⟨x, RoPEInverse(g)⟩ = %g", lhs, rhs)
	}
	if err := be.RoPEInverse(xt, 3, theta, 0); err == nil {
		t.Error("RoPEInverse with an odd rotary dim: no error")
	}
}

func TestSumHeadsSetColsFill(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(21, 22))
	const rows, srcHeads, heads, dim = 6, 3, 12, 10
	src, srcT := f32Array(t, be, rng, -1, 1, rows, heads, dim)
	want := make([]float64, rows*srcHeads*dim)
	rep := heads / srcHeads
	for r := range rows {
		for s := range srcHeads {
			for d := range dim {
				var acc float64 // in double, in head order: the kernel's sum
				for j := range rep {
					acc += src.Data[(r*heads+s*rep+j)*dim+d]
				}
				want[(r*srcHeads+s)*dim+d] = acc
			}
		}
	}
	out := poisoned(t, be, rows, srcHeads*dim)
	if err := be.SumHeads(out, srcT, srcHeads, heads, dim); err != nil {
		t.Fatal(err)
	}
	checkExact(t, "SumHeads", download(t, be, out), f32Round(want))
	// SumHeads is RepeatHeads' adjoint: ⟨RepeatHeads(y), src⟩ = ⟨y, SumHeads(src)⟩.
	y, yt := f32Array(t, be, rng, -1, 1, rows, srcHeads*dim)
	ry := poisoned(t, be, rows, heads*dim)
	if err := be.RepeatHeads(ry, yt, srcHeads, heads, dim); err != nil {
		t.Fatal(err)
	}
	var lhs, rhs float64
	for i, v := range download(t, be, ry) {
		lhs += v * src.Data[i]
	}
	for i, v := range want {
		rhs += y.Data[i] * v
	}
	if math.Abs(lhs-rhs) > 1e-9*math.Abs(lhs) {
		t.Errorf("⟨RepeatHeads(y), src⟩ = %g, ⟨y, SumHeads(src)⟩ = %g", lhs, rhs)
	}
	if err := be.SumHeads(out, srcT, 5, heads, dim); err == nil {
		t.Error("SumHeads with heads not a multiple of srcHeads: no error")
	}

	dst, dstT := f32Array(t, be, rng, -1, 1, 2, 3, 20)
	cols, colsT := f32Array(t, be, rng, -1, 1, 6, 7)
	if err := be.SetCols(dstT, colsT, 9); err != nil {
		t.Fatal(err)
	}
	wantCols := dst.Clone()
	for r := range 6 {
		for j := range 7 {
			wantCols.Data[r*20+9+j] = cols.Data[r*7+j]
		}
	}
	checkExact(t, "SetCols", download(t, be, dstT), wantCols.Data)
	if err := be.SetCols(dstT, colsT, 14); err == nil {
		t.Error("SetCols past the last column: no error")
	}

	if err := be.Fill(dstT, -2.5); err != nil {
		t.Fatal(err)
	}
	for i, v := range download(t, be, dstT) {
		if v != -2.5 {
			t.Fatalf("Fill: element %d = %g", i, v)
		}
	}
}

// TestDropout compares the mask with Go's math/rand/v2 PCG draw by draw.
func TestDropout(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(23, 24))
	splitmix := func(x uint64) uint64 {
		x += 0x9e3779b97f4a7c15
		x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
		x = (x ^ (x >> 27)) * 0x94d049bb133111eb
		return x ^ (x >> 31)
	}
	for _, c := range []struct {
		rows, d int
		prob    float64
		seed    uint64
	}{
		{17, 333, 0.3, rng.Uint64()},
		{3, 2600, 0.1, 0xffffffffffffffff},
		{40, 64, 0.5, 0},
		{5, 100, 0, rng.Uint64()},
		{2, 9, 0.999, 12345},
	} {
		x, xt := f32Array(t, be, rng, 0.5, 2, c.rows, c.d)
		want := make([]float64, x.Len())
		thr := uint64(c.prob * (1 << 53))
		scale := float32(1 / (1 - c.prob))
		kept := 0
		for i := range c.rows {
			src := rand.NewPCG(c.seed, splitmix(uint64(i)))
			for j := range c.d {
				if src.Uint64()>>11 >= thr {
					want[i*c.d+j] = float64(float32(x.Data[i*c.d+j]) * scale)
					kept++
				}
			}
		}
		name := fmt.Sprintf("%d×%d p=%g seed=%#x", c.rows, c.d, c.prob, c.seed)
		out := poisoned(t, be, c.rows, c.d)
		if err := be.Dropout(out, xt, c.seed, c.prob); err != nil {
			t.Fatal(err)
		}
		checkExact(t, name, download(t, be, out), want)
		if err := be.Dropout(xt, xt, c.seed, c.prob); err != nil { // in place
			t.Fatal(err)
		}
		checkExact(t, name+" in place", download(t, be, xt), want)
		if n := c.rows * c.d; n >= 5000 {
			if frac := 1 - float64(kept)/float64(n); math.Abs(frac-c.prob) > 0.02 {
				t.Errorf("%s: dropped fraction %.3f", name, frac)
			}
		}
	}
	for _, p := range []float64{1, -0.1, math.NaN()} {
		if err := be.Dropout(poisoned(t, be, 2, 3), poisoned(t, be, 2, 3), 1, p); err == nil {
			t.Errorf("Dropout with probability %g: no error", p)
		}
	}
}

// attentionGrads is the float64 backward of softmax attention: dq, dk, dv
// given dout (and the forward output it recomputes).
func attentionGrads(q, k, v, dout *reference.Array, scale float64, causal bool) (out, dq, dk, dv *reference.Array) {
	nb, l, H, p := q.Shape[0], q.Shape[1], q.Shape[2], q.Shape[3]
	Hkv := k.Shape[2]
	rep := H / Hkv
	out, dq = reference.New(nb, l, H, p), reference.New(nb, l, H, p)
	dk, dv = reference.New(nb, l, Hkv, p), reference.New(nb, l, Hkv, p)
	P, dP := make([]float64, l), make([]float64, l)
	for b := range nb {
		for h := range H {
			hk := h / rep
			qi := func(t int) int { return ((b*l+t)*H + h) * p }
			ki := func(s int) int { return ((b*l+s)*Hkv + hk) * p }
			for t := range l {
				last := l
				if causal {
					last = t + 1
				}
				m := math.Inf(-1)
				for s := range last {
					var dot float64
					for d := range p {
						dot += q.Data[qi(t)+d] * k.Data[ki(s)+d]
					}
					P[s] = scale * dot
					m = max(m, P[s])
				}
				var sum float64
				for s := range last {
					P[s] = math.Exp(P[s] - m)
					sum += P[s]
				}
				var D float64
				for s := range last {
					P[s] /= sum
					var dot float64
					for d := range p {
						dot += dout.Data[qi(t)+d] * v.Data[ki(s)+d]
						out.Data[qi(t)+d] += P[s] * v.Data[ki(s)+d]
					}
					dP[s] = dot
					D += P[s] * dot
				}
				for s := range last {
					dS := P[s] * (dP[s] - D)
					for d := range p {
						dq.Data[qi(t)+d] += scale * dS * k.Data[ki(s)+d]
						dk.Data[ki(s)+d] += scale * dS * q.Data[qi(t)+d]
						dv.Data[ki(s)+d] += P[s] * dout.Data[qi(t)+d]
					}
				}
			}
		}
	}
	return out, dq, dk, dv
}

type attnCase struct {
	nb, l, h, hkv, p int
	causal, bf16     bool
	blockRows        int // attnBlockRows for the call (0: chosen)
}

func TestSoftmaxAttentionBackward(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(25, 26))
	saved := attnBlockRows
	defer func() { attnBlockRows = saved }()
	for _, c := range []attnCase{
		{nb: 1, l: 70, h: 2, hkv: 2, p: 16, causal: true},
		{nb: 2, l: 100, h: 4, hkv: 2, p: 80, causal: true, blockRows: 32}, // GQA, 4 blocks, the last partial
		{nb: 1, l: 90, h: 3, hkv: 1, p: 24, causal: false, blockRows: 40},
		{nb: 1, l: 150, h: 2, hkv: 2, p: 64, causal: true, blockRows: 1},
		{nb: 2, l: 100, h: 4, hkv: 2, p: 80, causal: true, bf16: true, blockRows: 48},
		{nb: 1, l: 64, h: 2, hkv: 1, p: 32, causal: false, bf16: true},
	} {
		t.Run(fmt.Sprintf("%+v", c), func(t *testing.T) {
			attnBlockRows = c.blockRows
			up := func(shape ...int) (*reference.Array, kernels.Tensor) {
				if c.bf16 {
					return bf16Array(t, be, rng, -1, 1, shape...)
				}
				return f32Array(t, be, rng, -1, 1, shape...)
			}
			q, qt := up(c.nb, c.l, c.h, c.p)
			k, kt := up(c.nb, c.l, c.hkv, c.p)
			v, vt := up(c.nb, c.l, c.hkv, c.p)
			dout, doutT := f32Array(t, be, rng, -1, 1, c.nb, c.l, c.h, c.p)
			scale := 1 / math.Sqrt(float64(c.p))
			out, dq, dk, dv := attentionGrads(q, k, v, dout, float64(float32(scale)), c.causal)
			outT, err := be.Upload(out.Float32(), kernels.F32, out.Shape...)
			if err != nil {
				t.Fatal(err)
			}
			dqT, dkT, dvT := poisoned(t, be, q.Shape...), poisoned(t, be, k.Shape...), poisoned(t, be, v.Shape...)
			if err := be.SoftmaxAttentionBackward(dqT, dkT, dvT, doutT, qt, kt, vt, outT, float32(scale), c.causal); err != nil {
				t.Fatal(err)
			}
			tol := 1e-5
			if c.bf16 {
				tol = 5e-3 // dout, P and dS rounded to bf16 for the products: ≈2.3e-3 measured
			}
			checkRel(t, "dq", download(t, be, dqT), dq.Data, tol)
			checkRel(t, "dk", download(t, be, dkT), dk.Data, tol)
			checkRel(t, "dv", download(t, be, dvT), dv.Data, tol)
			// The forward through the same blocked products.
			got := poisoned(t, be, out.Shape...)
			err = be.do("attention gemm", func() error {
				o := be.ops("softmaxattention")
				s := be.attnOperands(o, got, qt, kt, vt)
				if o.err != nil {
					return o.err
				}
				return be.softmaxAttentionGEMM(o.op, s, float32(scale), c.causal)
			})
			if err != nil {
				t.Fatal(err)
			}
			// With bf16 q, k, v the products take bf16 operands and P is
			// rounded to bf16 (as flash-attention), so the bf16 tolerance.
			checkRel(t, "forward", download(t, be, got), out.Data, tol)
		})
	}
	attnBlockRows = 0
	for _, c := range []struct{ l, hkv, bytes, want int }{
		{1428, 32, 12, 480}, {1428, 32, 8, 512}, {4096, 32, 12, 160}, {4096, 32, 8, 256}, {100, 4, 8, 100},
	} {
		if got := attnRows(c.l, c.hkv, c.bytes); got != c.want || got*c.hkv*scoreLD(c.l)*c.bytes > attnScratchBytes {
			t.Errorf("attnRows(l=%d, %d kv heads, %d bytes a score) = %d, want %d within the scratch", c.l, c.hkv, c.bytes, got, c.want)
		}
	}
	if got := attnForwardRows(1428, 32, true, 4); got != 192 {
		t.Errorf("attnForwardRows(1428, 32, causal) = %d, want 192", got)
	}
}

// TestSoftmaxAttentionLong: SoftmaxAttention on a causal sequence long
// enough for the blocked products (useAttentionGEMM), f32 and bf16
// inputs, GQA, against the float64 reference on the same (rounded)
// inputs: 1e-5 in f32; with bf16 inputs the products take bf16 operands
// and P is rounded to bf16, so 5e-3 (and more than 1e-6 away from the
// f32 path, which shows the bf16 products ran). (Full attention of that
// length stays on the flash kernel, which the conformance suite covers.)
func TestSoftmaxAttentionLong(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(29, 30))
	l := attnGEMMMinLen + 9
	if useAttentionGEMM(&scan{l: l}, false) || !useAttentionGEMM(&scan{l: l}, true) || useAttentionGEMM(&scan{l: attnGEMMMinLen - 1}, true) {
		t.Fatalf("useAttentionGEMM: want the products for causal sequences of %d tokens and more only", attnGEMMMinLen)
	}
	for _, bf := range []bool{false, true} {
		up := func(shape ...int) (*reference.Array, kernels.Tensor) {
			if bf {
				return bf16Array(t, be, rng, -1, 1, shape...)
			}
			return f32Array(t, be, rng, -1, 1, shape...)
		}
		q, qt := up(1, l, 2, 16)
		k, kt := up(1, l, 1, 16)
		v, vt := up(1, l, 1, 16)
		want, err := reference.SoftmaxAttention(q, k, v, 0.25, true)
		if err != nil {
			t.Fatal(err)
		}
		out := poisoned(t, be, 1, l, 2, 16)
		if err := be.SoftmaxAttention(out, qt, kt, vt, 0.25, true); err != nil {
			t.Fatal(err)
		}
		tol := 1e-5
		if bf {
			tol = 5e-3
		}
		got := download(t, be, out)
		checkRel(t, fmt.Sprintf("l=%d bf16=%v causal", l, bf), got, want.Data, tol)
		if bf {
			if e := conformance.RelErr(got, want.Data); e < 1e-6 {
				t.Errorf("bf16 inputs: error %.2g against the float64 reference: the bf16 products did not run", e)
			}
		}
	}
}

func TestDenseGradErrors(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(27, 28))
	_, a := f32Array(t, be, rng, -1, 1, 5, 4)
	_, b := f32Array(t, be, rng, -1, 1, 6, 3)
	_, sq := f32Array(t, be, rng, -1, 1, 4, 4)
	_, q := f32Array(t, be, rng, -1, 1, 1, 8, 2, 16)
	_, kv := f32Array(t, be, rng, -1, 1, 1, 8, 2, 16)
	for _, c := range []struct {
		name string
		err  error
	}{
		{"MatMulAT rows differ", be.MatMulAT(poisoned(t, be, 4, 3), a, b, false)},
		{"MatMulAT out shape", be.MatMulAT(poisoned(t, be, 3, 4), a, a, false)},
		{"MatMulAT out aliases a", be.MatMulAT(sq, sq, poisoned(t, be, 4, 4), true)},
		{"SumRows out size", be.SumRows(poisoned(t, be, 5), a, false)},
		{"SiLUBackward shapes", be.SiLUBackward(poisoned(t, be, 5, 4), a, b)},
		{"attention dq aliases q", be.SoftmaxAttentionBackward(q, poisoned(t, be, 1, 8, 2, 16), poisoned(t, be, 1, 8, 2, 16), poisoned(t, be, 1, 8, 2, 16), q, kv, kv, poisoned(t, be, 1, 8, 2, 16), 0.25, true)},
		{"attention dk shape", be.SoftmaxAttentionBackward(poisoned(t, be, 1, 8, 2, 16), poisoned(t, be, 1, 8, 1, 16), poisoned(t, be, 1, 8, 2, 16), poisoned(t, be, 1, 8, 2, 16), q, kv, kv, poisoned(t, be, 1, 8, 2, 16), 0.25, true)},
		{"attention scale", be.SoftmaxAttentionBackward(poisoned(t, be, 1, 8, 2, 16), poisoned(t, be, 1, 8, 2, 16), poisoned(t, be, 1, 8, 2, 16), poisoned(t, be, 1, 8, 2, 16), q, kv, kv, poisoned(t, be, 1, 8, 2, 16), float32(math.Inf(1)), true)},
		{"Fill nil", be.Fill(nil, 1)},
	} {
		if c.err == nil {
			t.Errorf("%s: no error", c.name)
		} else {
			t.Logf("%s: %v", c.name, c.err)
		}
	}
}

// TestDenseGradConformance runs the shared DenseGrad suite at the
// backend's tolerances (float32 products; the peaked-softmax attention
// case gets the suite's own slack).
func TestDenseGradConformance(t *testing.T) {
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	conformance.RunDenseGrad(t, func() kernels.Backend {
		be, err := New(0)
		if err != nil {
			t.Fatalf("New(0): %v", err)
		}
		return be
	}, tolerances())
}
