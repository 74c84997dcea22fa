package conformance

import (
	"math"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// memory: Upload/Download round trips, BF16 rounding on upload, Reshape
// views sharing storage.
func (s *suite) memory(e *env) {
	a := e.rand(-3, 3, 3, 5, 7)
	e.exact("f32 upload/download", e.down(e.up(a)), a)

	// Upload to BF16 rounds to nearest even, like reference.RoundBF16.
	b := e.rand(-3, 3, 4, 33)
	bt, err := e.be.Upload(b.Float32(), kernels.BF16, b.Shape...)
	e.must("upload bf16", err)
	defer e.be.Free(bt)
	if bt.DType() != kernels.BF16 || bt.Len() != b.Len() {
		e.Errorf("upload bf16: dtype %v len %d, want bf16 %d", bt.DType(), bt.Len(), b.Len())
	}
	e.exact("bf16 upload rounding", e.down(bt), reference.RoundBF16(b))

	// UploadBF16 keeps raw bits.
	c := e.rand(-3, 3, 2, 9)
	e.exact("raw bf16 round trip", e.down(e.upBF16(c)), c)

	// A reshaped view shares storage: an op writing through the view is
	// seen in the original.
	x := e.rand(-2, 2, 2, 3, 4)
	dst := e.poisoned(2, 12)
	view, err := e.be.Reshape(dst, 2, 3, 4)
	e.must("reshape", err)
	if !slicesEqual(view.Shape(), []int{2, 3, 4}) {
		e.Errorf("reshape: view shape %v", view.Shape())
	}
	e.must("scale into view", e.be.Scale(view, e.up(x), 1))
	e.exact("write through view", e.down(dst), x)
	e.be.Free(view) // a no-op on views: dst stays usable
	e.exact("owner after freeing its view", e.down(dst), x)
	e.fails("reshape to another length", func() error { _, err := e.be.Reshape(dst, 5, 5); return err })
}

func slicesEqual(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// convert: f32→bf16 rounds to nearest even (ties, NaN, ±Inf, overflow),
// bf16→f32 and same-dtype copies are exact.
func (s *suite) convert(e *env) {
	a := e.rand(-100, 100, 5, 37)
	// Specials and ties: 1+2⁻⁸ (tie to even, down), 1+3·2⁻⁸ (tie, up),
	// values just above a tie, ±Inf, NaN, the largest float32 (→ +Inf),
	// the smallest subnormal.
	specials := []float64{
		float64(math.Float32frombits(0x3F808000)), float64(math.Float32frombits(0x3F818000)),
		float64(math.Float32frombits(0x3F808001)), math.Inf(1), math.Inf(-1), math.NaN(),
		math.MaxFloat32, -math.MaxFloat32, float64(math.Float32frombits(1)), 0, -1.5,
	}
	copy(a.Data, specials)
	src := e.up(a)
	out, err := e.be.Alloc(kernels.BF16, a.Shape...)
	e.must("alloc bf16", err)
	defer e.be.Free(out)
	e.must("convert f32→bf16", e.be.Convert(out, src))
	e.exact("convert f32→bf16", e.down(out), reference.RoundBF16(a))

	b := e.rand(-5, 5, 3, 11)
	bt := e.upBF16(b)
	f := e.poisoned(3, 11)
	e.must("convert bf16→f32", e.be.Convert(f, bt))
	e.exact("convert bf16→f32", e.down(f), b)

	g := e.poisoned(5, 37)
	e.must("convert f32→f32", e.be.Convert(g, src))
	e.exact("convert f32→f32", e.down(g), a)

	h, err := e.be.Alloc(kernels.BF16, 3, 11)
	e.must("alloc bf16", err)
	defer e.be.Free(h)
	e.must("convert bf16→bf16", e.be.Convert(h, bt))
	e.exact("convert bf16→bf16", e.down(h), b)
}

// matmul: transB and not, every mix of F32 and BF16 operands, odd sizes,
// leading dimensions flattened, more output columns than one panel.
func (s *suite) matmul(e *env) {
	type mm struct {
		aShape []int
		n      int
	}
	cases := []mm{
		{[]int{1, 1}, 1},
		{[]int{7, 13}, 5},
		{[]int{3, 5, 33}, 17},
		{[]int{64, 300}, 129},
		{[]int{2, 35, 96}, 300},
		{[]int{2, 70, 300}, 333}, // several blocks in every dimension
	}
	for _, c := range cases {
		k := c.aShape[len(c.aShape)-1]
		for _, transB := range []bool{true, false} {
			for _, dts := range [][2]kernels.DType{{kernels.F32, kernels.F32}, {kernels.BF16, kernels.F32}, {kernels.F32, kernels.BF16}, {kernels.BF16, kernels.BF16}} {
				a := e.rand(-1, 1, c.aShape...)
				bShape := []int{k, c.n}
				if transB {
					bShape = []int{c.n, k}
				}
				b := e.rand(-1, 1, bShape...)
				at, bt := e.upAs(a, dts[0]), e.upAs(b, dts[1])
				outShape := append(append([]int{}, c.aShape[:len(c.aShape)-1]...), c.n)
				out := e.poisoned(outShape...)
				what := name("matmul a%v(%v) b%v(%v) transB=%v", c.aShape, dts[0], bShape, dts[1], transB)
				e.must(what, e.be.MatMul(out, at, bt, transB))
				tol := e.tol.F32
				if dts[0] == kernels.BF16 || dts[1] == kernels.BF16 {
					tol = e.tol.BF16
				}
				e.check(what, e.down(out), e.want(reference.MatMul(a, b, transB)), tol)
			}
		}
	}
	// Out flattened differently from a: a [6, 8] into out [2, 3, 4].
	a := e.rand(-1, 1, 6, 8)
	b := e.rand(-1, 1, 4, 8)
	out := e.poisoned(2, 3, 4)
	e.must("matmul flattened out", e.be.MatMul(out, e.up(a), e.up(b), true))
	e.check("matmul flattened out", e.down(out), e.want(reference.MatMul(a, b, true)), e.tol.F32)
}

func (s *suite) addBias(e *env) {
	for _, shape := range [][]int{{3, 4, 7}, {1, 1}, {300, 129}} {
		x := e.rand(-2, 2, shape...)
		bias := e.rand(-1, 1, shape[len(shape)-1])
		xt := e.up(x)
		e.must("addbias", e.be.AddBias(xt, e.up(bias)))
		e.check(name("addbias %v", shape), e.down(xt), e.want(reference.AddBias(x, bias)), e.tol.F32)
	}
}

// elementwise: Add, Mul, Scale, SiLU, GELU (both forms), out of place and
// in place, small and large (parallel) sizes, large magnitudes.
func (s *suite) elementwise(e *env) {
	for _, shape := range [][]int{{2, 3, 5}, {1}, {70001}} {
		a := e.rand(-6, 6, shape...)
		b := e.rand(-6, 6, shape...)
		a.Data[0] = 40 // far tails of SiLU and GELU
		if len(a.Data) > 1 {
			a.Data[1] = -40
		}
		bin := []struct {
			op   string
			call func(out, x, y kernels.Tensor) error
			want func() (*reference.Array, error)
		}{
			{"add", e.be.Add, func() (*reference.Array, error) { return reference.Add(a, b) }},
			{"mul", e.be.Mul, func() (*reference.Array, error) { return reference.Mul(a, b) }},
		}
		for _, c := range bin {
			want := e.want(c.want())
			out := e.poisoned(shape...)
			e.must(c.op, c.call(out, e.up(a), e.up(b)))
			e.check(name("%s %v", c.op, shape), e.down(out), want, e.tol.F32)
			inplace := e.up(a)
			e.must(c.op+" in place", c.call(inplace, inplace, e.up(b)))
			e.check(name("%s in place %v", c.op, shape), e.down(inplace), want, e.tol.F32)
		}
		un := []struct {
			op   string
			call func(out, x kernels.Tensor) error
			want *reference.Array
		}{
			{"scale", func(o, x kernels.Tensor) error { return e.be.Scale(o, x, -0.3125) }, reference.Scale(a, -0.3125)},
			{"silu", e.be.SiLU, reference.SiLU(a)},
			{"gelu erf", func(o, x kernels.Tensor) error { return e.be.GELU(o, x, kernels.GELUErf) }, reference.GELU(a, false)},
			{"gelu tanh", func(o, x kernels.Tensor) error { return e.be.GELU(o, x, kernels.GELUTanh) }, reference.GELU(a, true)},
		}
		for _, c := range un {
			out := e.poisoned(shape...)
			e.must(c.op, c.call(out, e.up(a)))
			e.check(name("%s %v", c.op, shape), e.down(out), c.want, e.tol.F32)
			inplace := e.up(a)
			e.must(c.op+" in place", c.call(inplace, inplace))
			e.check(name("%s in place %v", c.op, shape), e.down(inplace), c.want, e.tol.F32)
		}
	}
}

func (s *suite) sliceCols(e *env) {
	cases := []struct {
		src        []int
		col0, cols int
	}{{[]int{2, 3, 10}, 5, 4}, {[]int{7, 10}, 0, 10}, {[]int{1, 300, 97}, 96, 1}}
	for _, c := range cases {
		src := e.rand(-1, 1, c.src...)
		outShape := append(append([]int{}, c.src[:len(c.src)-1]...), c.cols)
		out := e.poisoned(outShape...)
		e.must("slicecols", e.be.SliceCols(out, e.up(src), c.col0))
		e.exact(name("slicecols %v [%d,+%d)", c.src, c.col0, c.cols), e.down(out), e.want(reference.SliceCols(src, c.col0, c.cols)))
	}
}

func (s *suite) repeatHeads(e *env) {
	cases := []struct{ rows, srcHeads, heads, dim int }{{6, 2, 6, 4}, {5, 3, 3, 7}, {1, 1, 8, 5}, {33, 4, 32, 3}}
	for _, c := range cases {
		src := e.rand(-1, 1, c.rows, c.srcHeads*c.dim)
		out := e.poisoned(c.rows, c.heads, c.dim) // [.., heads, dim] from [.., srcHeads·dim]
		e.must("repeatheads", e.be.RepeatHeads(out, e.up(src), c.srcHeads, c.heads, c.dim))
		e.exact(name("repeatheads %+v", c), e.down(out), e.want(reference.RepeatHeads(src, c.srcHeads, c.heads, c.dim)))
	}
}

func (s *suite) layerNorm(e *env) {
	for _, shape := range [][]int{{4, 33}, {2, 3, 256}, {1, 1}} {
		n := shape[len(shape)-1]
		x := e.rand(4, 6, shape...) // a mean far from zero tests the variance's cancellation
		w := e.rand(0.5, 1.5, n)
		b := e.rand(-0.5, 0.5, n)
		for _, withBias := range []bool{true, false} {
			var bt kernels.Tensor
			var br *reference.Array
			if withBias {
				bt, br = e.up(b), b
			}
			out := e.poisoned(shape...)
			e.must("layernorm", e.be.LayerNorm(out, e.up(x), e.up(w), bt, 1e-5))
			e.check(name("layernorm %v bias=%v", shape, withBias), e.down(out), e.want(reference.LayerNorm(x, w, br, 1e-5)), e.tol.F32)
		}
		inplace := e.up(x)
		e.must("layernorm in place", e.be.LayerNorm(inplace, inplace, e.up(w), e.up(b), 1e-6))
		e.check(name("layernorm in place %v", shape), e.down(inplace), e.want(reference.LayerNorm(x, w, b, 1e-6)), e.tol.F32)
	}
}

func (s *suite) rmsNorm(e *env) {
	for _, shape := range [][]int{{4, 33}, {2, 3, 896}, {1, 1}} {
		n := shape[len(shape)-1]
		x := e.rand(-3, 3, shape...)
		w := e.rand(0.5, 1.5, n)
		out := e.poisoned(shape...)
		e.must("rmsnorm", e.be.RMSNorm(out, e.up(x), e.up(w), 1e-6))
		e.check(name("rmsnorm %v", shape), e.down(out), e.want(reference.RMSNorm(x, w, 1e-6)), e.tol.F32)
	}
}

func (s *suite) gatedRMSNorm(e *env) {
	cases := []struct {
		shape []int
		group int
	}{{[]int{2, 5, 24}, 24}, {[]int{2, 5, 24}, 6}, {[]int{3, 160}, 80}, {[]int{1, 7}, 1}}
	for _, c := range cases {
		n := c.shape[len(c.shape)-1]
		y := e.rand(-3, 3, c.shape...)
		z := e.rand(-4, 4, c.shape...)
		w := e.rand(0.5, 1.5, n)
		out := e.poisoned(c.shape...)
		e.must("gatedrmsnorm", e.be.GatedRMSNorm(out, e.up(y), e.up(z), e.up(w), c.group, 1e-5))
		e.check(name("gatedrmsnorm %v group %d", c.shape, c.group), e.down(out), e.want(reference.GatedRMSNorm(y, z, w, c.group, 1e-5)), e.tol.F32)
		out2 := e.poisoned(c.shape...)
		e.must("gatedrmsnorm no gate", e.be.GatedRMSNorm(out2, e.up(y), nil, e.up(w), c.group, 1e-5))
		e.check(name("gatedrmsnorm no gate %v group %d", c.shape, c.group), e.down(out2), e.want(reference.GatedRMSNorm(y, nil, w, c.group, 1e-5)), e.tol.F32)
	}
}

func (s *suite) dtSoftplus(e *env) {
	for _, shape := range [][]int{{2, 7, 5}, {1, 1, 1}, {1, 300, 32}} {
		h := shape[len(shape)-1]
		raw := e.rand(-30, 30, shape...) // both tails: log1p(eˣ) and the x > 20 branch
		bias := e.rand(-5, 1, h)
		out := e.poisoned(shape...)
		e.must("dtsoftplus", e.be.DtSoftplus(out, e.up(raw), e.up(bias)))
		e.check(name("dtsoftplus %v", shape), e.down(out), e.want(reference.DtSoftplus(raw, bias)), e.tol.F32)
		out2 := e.poisoned(shape...)
		e.must("dtsoftplus no bias", e.be.DtSoftplus(out2, e.up(raw), nil))
		e.check(name("dtsoftplus no bias %v", shape), e.down(out2), e.want(reference.DtSoftplus(raw, nil)), e.tol.F32)
	}
}

func (s *suite) causalConv1d(e *env) {
	cases := []struct {
		b, l, c, k int
		bias, silu bool
	}{
		{2, 9, 5, 4, true, true},
		{1, 2, 3, 4, true, true}, // shorter than the kernel
		{3, 17, 1, 1, false, false},
		{1, 40, 70, 3, false, true},
		{2, 33, 7, 4, true, false},
	}
	for _, c := range cases {
		u := e.rand(-2, 2, c.b, c.l, c.c)
		w := e.rand(-0.5, 0.5, c.c, c.k)
		var bt kernels.Tensor
		var br *reference.Array
		if c.bias {
			br = e.rand(-0.5, 0.5, c.c)
			bt = e.up(br)
		}
		out := e.poisoned(c.b, c.l, c.c)
		e.must("causalconv1d", e.be.CausalConv1d(out, e.up(u), e.up(w), bt, c.silu))
		e.check(name("causalconv1d %+v", c), e.down(out), e.want(reference.CausalConv1d(u, w, br, c.silu)), e.tol.F32)
	}
}

// ssdCase is one scan configuration.
type ssdCase struct {
	b, l, h, p, g, n, chunk int
	withD, withState        bool
	dtLo, dtHi, aLo, aHi    float64
}

func (e *env) ssdInputs(c ssdCase) (x, dt, A, B, C, D, st *reference.Array) {
	x = e.rand(-1, 1, c.b, c.l, c.h, c.p)
	dt = e.rand(c.dtLo, c.dtHi, c.b, c.l, c.h)
	A = e.rand(c.aLo, c.aHi, c.h)
	B = e.rand(-1, 1, c.b, c.l, c.g, c.n)
	C = e.rand(-1, 1, c.b, c.l, c.g, c.n)
	if c.withD {
		D = e.rand(0.5, 1.5, c.h)
	}
	if c.withState {
		st = e.rand(-1, 1, c.b, c.h, c.p, c.n)
	}
	return
}

// runSSD runs both scans of the backend on one case and checks y and the
// final state against the float64 recurrence.
func (e *env) runSSD(c ssdCase) {
	e.Helper()
	x, dt, A, B, C, D, st := e.ssdInputs(c)
	wantY, wantS := ref2(e, reference.SSDRecurrence)(x, dt, A, B, C, D, st)
	for _, chunked := range []bool{false, true} {
		var dT, sT kernels.Tensor
		if D != nil {
			dT = e.up(D)
		}
		if st != nil {
			sT = e.up(st)
		}
		y := e.poisoned(c.b, c.l, c.h, c.p)
		what := name("ssd recurrence %+v", c)
		var err error
		if chunked {
			what = name("ssd chunk scan %+v", c)
			err = e.be.SSDChunkScan(y, e.up(x), e.up(dt), e.up(A), e.up(B), e.up(C), dT, sT, c.chunk)
		} else {
			err = e.be.SSDRecurrence(y, e.up(x), e.up(dt), e.up(A), e.up(B), e.up(C), dT, sT)
		}
		e.must(what, err)
		e.check(what+" y", e.down(y), wantY, e.tol.Scan)
		if sT != nil {
			e.check(what+" final state", e.down(sT), wantS, e.tol.Scan)
		}
	}
}

func ref2(e *env, f func(x, dt, A, B, C, D, st *reference.Array) (*reference.Array, *reference.Array, error)) func(x, dt, A, B, C, D, st *reference.Array) (*reference.Array, *reference.Array) {
	return func(x, dt, A, B, C, D, st *reference.Array) (*reference.Array, *reference.Array) {
		e.Helper()
		y, s, err := f(x, dt, A, B, C, D, st)
		if err != nil {
			e.Fatalf("reference: %v", err)
		}
		return y, s
	}
}

func (s *suite) ssd(e *env) {
	for _, c := range []ssdCase{
		{b: 2, l: 37, h: 4, p: 5, g: 2, n: 3, chunk: 8, withD: true, withState: true, dtLo: 0.001, dtHi: 0.5, aLo: -4, aHi: -0.1},
		{b: 1, l: 64, h: 3, p: 8, g: 1, n: 16, chunk: 16, dtLo: 0.001, dtHi: 0.1, aLo: -16, aHi: -1},
		{b: 1, l: 1, h: 2, p: 3, g: 2, n: 4, chunk: 4, withD: true, withState: true, dtLo: 0.01, dtHi: 1, aLo: -2, aHi: -0.5},
		{b: 2, l: 10, h: 6, p: 4, g: 3, n: 5, chunk: 64, withD: true, dtLo: 0.01, dtHi: 1, aLo: -2, aHi: -0.5}, // chunk > L
		{b: 1, l: 300, h: 2, p: 16, g: 2, n: 16, chunk: 64, withD: true, withState: true, dtLo: 0.001, dtHi: 0.1, aLo: -8, aHi: -1},
		{b: 1, l: 129, h: 4, p: 7, g: 4, n: 9, chunk: 1, withState: true, dtLo: 0.01, dtHi: 0.3, aLo: -3, aHi: -0.1},                   // chunk of one token
		{b: 1, l: 200, h: 32, p: 80, g: 32, n: 80, chunk: 64, withD: true, withState: true, dtLo: 0.001, dtHi: 0.1, aLo: -16, aHi: -1}, // Phi-2 head sizes
	} {
		e.runSSD(c)
	}
}

// ssdExtreme: decays that underflow (dt·A down to −500) and near-zero
// decays must give finite, correct results in both scans.
func (s *suite) ssdExtreme(e *env) {
	e.runSSD(ssdCase{b: 1, l: 50, h: 3, p: 4, g: 3, n: 4, chunk: 16, withD: true, withState: true, dtLo: 1, dtHi: 25, aLo: -20, aHi: -5})
	e.runSSD(ssdCase{b: 1, l: 50, h: 2, p: 4, g: 1, n: 4, chunk: 16, withState: true, dtLo: 1e-6, dtHi: 1e-4, aLo: -1e-3, aHi: -1e-6})
}

// ssdLinearLimit: with A = 0, dt = 1, D = nil, groups = heads, x = v, B = k,
// C = q both scans are causal linear attention (SPEC §4).
func (s *suite) ssdLinearLimit(e *env) {
	const b, l, h, p = 2, 45, 3, 6
	q := e.rand(-1, 1, b, l, h, p)
	k := e.rand(-1, 1, b, l, h, p)
	v := e.rand(-1, 1, b, l, h, p)
	ones := reference.New(b, l, h)
	for i := range ones.Data {
		ones.Data[i] = 1
	}
	want := e.want(reference.LinearAttention(q, k, v))
	for _, chunked := range []bool{false, true} {
		y := e.poisoned(b, l, h, p)
		var err error
		if chunked {
			err = e.be.SSDChunkScan(y, e.up(v), e.up(ones), e.up(reference.New(h)), e.up(k), e.up(q), nil, nil, 16)
		} else {
			err = e.be.SSDRecurrence(y, e.up(v), e.up(ones), e.up(reference.New(h)), e.up(k), e.up(q), nil, nil)
		}
		e.must("ssd linear limit", err)
		e.check(name("ssd linear-attention limit chunked=%v", chunked), e.down(y), want, e.tol.Scan)
	}
	out := e.poisoned(b, l, h, p)
	e.must("linearattention", e.be.LinearAttention(out, e.up(q), e.up(k), e.up(v)))
	e.check("linearattention (limit inputs)", e.down(out), want, e.tol.Scan)
}

type attnCase struct{ b, l, h, hkv, p int }

func (s *suite) linearAttention(e *env) {
	for _, c := range []attnCase{{2, 19, 4, 2, 8}, {1, 1, 3, 3, 5}, {1, 200, 6, 1, 16}, {2, 33, 2, 2, 80}} {
		q := e.rand(-1, 1, c.b, c.l, c.h, c.p)
		k := e.rand(-1, 1, c.b, c.l, c.hkv, c.p)
		v := e.rand(-1, 1, c.b, c.l, c.hkv, c.p)
		out := e.poisoned(c.b, c.l, c.h, c.p)
		e.must("linearattention", e.be.LinearAttention(out, e.up(q), e.up(k), e.up(v)))
		e.check(name("linearattention %+v", c), e.down(out), e.want(reference.LinearAttention(q, k, v)), e.tol.Scan)
	}
}

func (s *suite) softmaxAttention(e *env) {
	for _, c := range []attnCase{{2, 19, 4, 2, 8}, {1, 1, 3, 3, 5}, {1, 70, 6, 2, 16}, {1, 130, 2, 1, 80}, {1, 300, 4, 2, 64}} {
		for _, causal := range []bool{true, false} {
			for _, scale := range []float64{1 / math.Sqrt(float64(c.p)), 8} { // 8: peaked, large scores
				q := e.rand(-1, 1, c.b, c.l, c.h, c.p)
				k := e.rand(-1, 1, c.b, c.l, c.hkv, c.p)
				v := e.rand(-1, 1, c.b, c.l, c.hkv, c.p)
				sc := float64(float32(scale))
				out := e.poisoned(c.b, c.l, c.h, c.p)
				e.must("softmaxattention", e.be.SoftmaxAttention(out, e.up(q), e.up(k), e.up(v), float32(sc), causal))
				e.check(name("softmaxattention %+v causal=%v scale=%.3g", c, causal, sc), e.down(out), e.want(reference.SoftmaxAttention(q, k, v, sc, causal)), e.tol.F32)
			}
		}
	}
}

func (s *suite) rope(e *env) {
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
		e.must("rope", e.be.RoPE(xt, c.rot, c.theta, c.pos0))
		e.check(name("rope %+v", c), e.down(xt), e.want(reference.RoPE(x, c.rot, c.theta, c.pos0)), e.tol.F32)
	}
}

// errors: bad shapes, dtypes and arguments are returned errors, never
// panics.
func (s *suite) errors(e *env) {
	be := e.be
	a := e.up(e.rand(-1, 1, 4, 6))
	b := e.up(e.rand(-1, 1, 6, 4))
	bf := e.upBF16(e.rand(-1, 1, 4, 6))
	out := e.poisoned(4, 4)
	e.fails("matmul inner mismatch", func() error { return be.MatMul(out, a, a, false) })
	e.fails("matmul wrong out", func() error { return be.MatMul(e.poisoned(4, 5), a, b, false) })
	e.fails("matmul 3-D b", func() error { return be.MatMul(out, a, e.up(e.rand(-1, 1, 1, 6, 4)), false) })
	e.fails("add shape mismatch", func() error { return be.Add(e.poisoned(4, 6), a, e.up(e.rand(-1, 1, 6, 4))) })
	e.fails("add bf16 operand", func() error { return be.Add(e.poisoned(4, 6), a, bf) })
	e.fails("convert shape mismatch", func() error { return be.Convert(e.poisoned(6, 4), a) })
	e.fails("addbias wrong bias", func() error { return be.AddBias(a, e.up(e.rand(-1, 1, 5))) })
	e.fails("slicecols past the end", func() error { return be.SliceCols(e.poisoned(4, 4), a, 3) })
	e.fails("slicecols row mismatch", func() error { return be.SliceCols(e.poisoned(3, 2), a, 0) })
	e.fails("repeatheads not a multiple", func() error { return be.RepeatHeads(e.poisoned(4, 15), a, 2, 5, 3) })
	e.fails("layernorm wrong weight", func() error { return be.LayerNorm(e.poisoned(4, 6), a, e.up(e.rand(-1, 1, 5)), nil, 1e-5) })
	e.fails("gatedrmsnorm group not dividing", func() error {
		return be.GatedRMSNorm(e.poisoned(4, 6), a, nil, e.up(e.rand(-1, 1, 6)), 4, 1e-5)
	})
	e.fails("conv wrong weight", func() error {
		return be.CausalConv1d(e.poisoned(1, 4, 6), e.up(e.rand(-1, 1, 1, 4, 6)), e.up(e.rand(-1, 1, 5, 4)), nil, true)
	})
	x := e.up(e.rand(-1, 1, 1, 8, 4, 3))
	dt := e.up(e.rand(0, 1, 1, 8, 4))
	A := e.up(e.rand(-1, 0, 4))
	B := e.up(e.rand(-1, 1, 1, 8, 3, 2)) // 4 heads, 3 groups
	y := e.poisoned(1, 8, 4, 3)
	e.fails("ssd heads not a multiple of groups", func() error { return be.SSDRecurrence(y, x, dt, A, B, B, nil, nil) })
	B2 := e.up(e.rand(-1, 1, 1, 8, 2, 2))
	e.fails("ssd wrong state", func() error {
		return be.SSDChunkScan(y, x, dt, A, B2, B2, nil, e.up(e.rand(-1, 1, 1, 4, 3, 3)), 4)
	})
	e.fails("ssd chunk 0", func() error { return be.SSDChunkScan(y, x, dt, A, B2, B2, nil, nil, 0) })
	q := e.up(e.rand(-1, 1, 1, 5, 4, 3))
	kv := e.up(e.rand(-1, 1, 1, 5, 3, 3))
	e.fails("attention heads not a multiple of kv heads", func() error {
		return be.SoftmaxAttention(e.poisoned(1, 5, 4, 3), q, kv, kv, 1, true)
	})
	e.fails("rope odd rotary dim", func() error { return be.RoPE(q, 3, 1e4, 0) })
	e.fails("rope rotary dim past head dim", func() error { return be.RoPE(q, 4, 1e4, 0) })
	e.fails("upload length mismatch", func() error { _, err := be.Upload(make([]float32, 5), kernels.F32, 2, 3); return err })
}
