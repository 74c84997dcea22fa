package reference

import (
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"testing"
)

// Every backward of train_dense.go is held against central finite
// differences of its forward reference: with L(x) = Σ dy∘f(x) for a fresh
// random dy, ∂L/∂x_j ≈ (L(x + h·e_j) − L(x − h·e_j))/(2h), h = 1e-5·max(1,
// |x_j|). Truncation (h²) and rounding (ε/h) errors are both near 1e-10
// relative, so the tolerance below leaves three orders of margin.
const denseFDTol = 1e-6

// denseFDGrad returns the finite-difference gradient of Σ dy∘f(x) with
// respect to x (x is perturbed in place and restored).
func denseFDGrad(t *testing.T, x, dy *Array, f func(*Array) (*Array, error)) *Array {
	t.Helper()
	loss := func() float64 {
		y, err := f(x)
		if err != nil {
			t.Fatalf("forward: %v", err)
		}
		if y.Len() != dy.Len() {
			t.Fatalf("forward gives %d elements %v, dy has %d %v", y.Len(), y.Shape, dy.Len(), dy.Shape)
		}
		var s float64
		for i, v := range y.Data {
			s += dy.Data[i] * v
		}
		return s
	}
	g := New(x.Shape...)
	for j, v := range x.Data {
		h := 1e-5 * max(1, math.Abs(v))
		x.Data[j] = v + h
		up := loss()
		x.Data[j] = v - h
		down := loss()
		x.Data[j] = v
		g.Data[j] = (up - down) / (2 * h)
	}
	return g
}

// denseCheck fails when got is not within tol of want (relative error over
// all elements) or differs in element count.
func denseCheck(t *testing.T, what string, got, want *Array, tol float64) {
	t.Helper()
	if got.Len() != want.Len() {
		t.Errorf("%s: %d elements %v, want %d %v", what, got.Len(), got.Shape, want.Len(), want.Shape)
		return
	}
	e := relErr(got, want)
	var norm float64
	for _, v := range want.Data {
		norm = max(norm, math.Abs(v))
	}
	if norm == 0 { // a gradient that is zero (LayerNorm of one element, attention over one token)
		e = 0
		for _, v := range got.Data {
			e = max(e, math.Abs(v))
		}
	}
	if !(e <= tol) {
		t.Errorf("%s: relative error %.3g > %.3g", what, e, tol)
	} else {
		t.Logf("%s: relative error %.3g", what, e)
	}
}

// denseMust returns a function that unwraps a reference result, failing
// the test on its error.
func denseMust(t *testing.T) func(*Array, error) *Array {
	return func(a *Array, err error) *Array {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
}

func TestMatMulATFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(81, 1))
	x := randArray(rng, -1, 1, 2, 3, 5) // 6 rows of 5 inputs
	dy := randArray(rng, -1, 1, 2, 3, 4)
	// A Linear y = x·Wᵀ (W [out, in]): dW = dyᵀ·x.
	w := randArray(rng, -1, 1, 4, 5)
	fd := denseFDGrad(t, w, dy, func(w *Array) (*Array, error) { return MatMul(x, w, true) })
	denseCheck(t, "dW of x·Wᵀ", denseMust(t)(MatMulAT(dy, x)), fd, denseFDTol)
	// y = x·W (W [in, out]): dW = xᵀ·dy.
	w2 := randArray(rng, -1, 1, 5, 4)
	fd2 := denseFDGrad(t, w2, dy, func(w *Array) (*Array, error) { return MatMul(x, w, false) })
	denseCheck(t, "dW of x·W", denseMust(t)(MatMulAT(x, dy)), fd2, denseFDTol)
	// The leading dimensions flatten: a [6, 5] and b [2, 3, 4] agree on k = 6.
	flat, err := x.Reshape(6, 5)
	if err != nil {
		t.Fatal(err)
	}
	if got := denseMust(t)(MatMulAT(dy, flat)); !slices.Equal(got.Shape, []int{4, 5}) || relErr(got, denseMust(t)(MatMulAT(dy, x))) != 0 {
		t.Errorf("matmulat of differently shaped rows: %v", got.Shape)
	}
	if _, err := MatMulAT(New(5, 4), New(6, 5)); err == nil {
		t.Error("matmulat with different row counts: no error")
	}
}

func TestSumRowsFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(81, 2))
	x := randArray(rng, -1, 1, 3, 4, 7)
	dy := randArray(rng, -1, 1, 3, 4, 7)
	bias := randArray(rng, -1, 1, 7)
	fd := denseFDGrad(t, bias, dy, func(b *Array) (*Array, error) { return AddBias(x, b) })
	got := denseMust(t)(SumRows(dy))
	if !slices.Equal(got.Shape, []int{7}) {
		t.Errorf("sumrows shape %v, want [7]", got.Shape)
	}
	denseCheck(t, "dbias", got, fd, denseFDTol)
}

func TestActivationBackwardFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(81, 3))
	x := randArray(rng, -6, 6, 4, 25)
	x.Data[0], x.Data[1], x.Data[2] = 0, 12, -12 // the origin and both tails
	dy := randArray(rng, -1, 1, 4, 25)
	cases := []struct {
		name    string
		forward func(*Array) (*Array, error)
		grad    func() (*Array, error)
	}{
		{"silu", func(x *Array) (*Array, error) { return SiLU(x), nil }, func() (*Array, error) { return SiLUBackward(dy, x) }},
		{"gelu erf", func(x *Array) (*Array, error) { return GELU(x, false), nil }, func() (*Array, error) { return GELUBackward(dy, x, false) }},
		{"gelu tanh", func(x *Array) (*Array, error) { return GELU(x, true), nil }, func() (*Array, error) { return GELUBackward(dy, x, true) }},
	}
	for _, c := range cases {
		fd := denseFDGrad(t, x, dy, c.forward)
		denseCheck(t, c.name, denseMust(t)(c.grad()), fd, denseFDTol)
	}
	if _, err := SiLUBackward(New(2, 3), New(3, 2)); err == nil {
		t.Error("silubackward of different shapes: no error")
	}
}

func TestNormBackwardFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(81, 4))
	for _, shape := range [][]int{{3, 17}, {2, 2, 8}, {1, 1}} {
		n := shape[len(shape)-1]
		x := randArray(rng, 2, 5, shape...) // a mean far from zero
		dy := randArray(rng, -1, 1, shape...)
		w := randArray(rng, 0.5, 1.5, n)
		b := randArray(rng, -0.5, 0.5, n)
		for _, eps := range []float64{1e-5, 0.5} {
			fd := denseFDGrad(t, x, dy, func(x *Array) (*Array, error) { return LayerNorm(x, w, b, eps) })
			denseCheck(t, "layernorm", denseMust(t)(LayerNormBackward(dy, x, w, eps)), fd, denseFDTol)
			fd = denseFDGrad(t, x, dy, func(x *Array) (*Array, error) { return LayerNorm(x, w, nil, eps) })
			denseCheck(t, "layernorm without bias", denseMust(t)(LayerNormBackward(dy, x, w, eps)), fd, denseFDTol)
			xs := randArray(rng, -3, 3, shape...)
			fd = denseFDGrad(t, xs, dy, func(x *Array) (*Array, error) { return RMSNorm(x, w, eps) })
			denseCheck(t, "rmsnorm", denseMust(t)(RMSNormBackward(dy, xs, w, eps)), fd, denseFDTol)
		}
	}
	if _, err := LayerNormBackward(New(2, 4), New(2, 4), New(3), 1e-5); err == nil {
		t.Error("layernormbackward with a wrong weight: no error")
	}
	if _, err := RMSNormBackward(New(2, 3), New(2, 4), New(4), 1e-5); err == nil {
		t.Error("rmsnormbackward with dy of another shape: no error")
	}
}

func TestSoftmaxAttentionBackwardFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(81, 5))
	cases := []struct{ b, l, h, hkv, p int }{
		{2, 5, 4, 2, 3}, // GQA
		{1, 4, 3, 3, 2}, // MHA
		{1, 6, 4, 1, 3}, // one kv head
		{1, 1, 2, 1, 4}, // a single token
	}
	for _, c := range cases {
		for _, causal := range []bool{true, false} {
			for _, scale := range []float64{0.7, 3} {
				q := randArray(rng, -1, 1, c.b, c.l, c.h, c.p)
				k := randArray(rng, -1, 1, c.b, c.l, c.hkv, c.p)
				v := randArray(rng, -1, 1, c.b, c.l, c.hkv, c.p)
				dy := randArray(rng, -1, 1, c.b, c.l, c.h, c.p)
				dq, dk, dv, err := SoftmaxAttentionBackward(dy, q, k, v, scale, causal)
				if err != nil {
					t.Fatal(err)
				}
				fq := denseFDGrad(t, q, dy, func(q *Array) (*Array, error) { return SoftmaxAttention(q, k, v, scale, causal) })
				fk := denseFDGrad(t, k, dy, func(k *Array) (*Array, error) { return SoftmaxAttention(q, k, v, scale, causal) })
				fv := denseFDGrad(t, v, dy, func(v *Array) (*Array, error) { return SoftmaxAttention(q, k, v, scale, causal) })
				denseCheck(t, "dq", dq, fq, denseFDTol)
				denseCheck(t, "dk", dk, fk, denseFDTol)
				denseCheck(t, "dv", dv, fv, denseFDTol)
			}
		}
	}
	q := New(1, 3, 4, 2)
	kv := New(1, 3, 2, 2)
	if _, _, _, err := SoftmaxAttentionBackward(New(1, 3, 2, 2), q, kv, kv, 1, true); err == nil {
		t.Error("attention backward with dout of the kv shape: no error")
	}
	if _, _, _, err := SoftmaxAttentionBackward(q, q, New(1, 3, 3, 2), New(1, 3, 3, 2), 1, true); err == nil {
		t.Error("attention backward with 4 heads over 3 kv heads: no error")
	}
}

func TestRoPEInverse(t *testing.T) {
	rng := rand.New(rand.NewPCG(81, 6))
	cases := []struct {
		b, l, h, p, rot int
		theta           float64
		pos0            int
	}{
		{2, 5, 3, 8, 8, 10000, 0},  // full
		{1, 4, 2, 10, 4, 10000, 3}, // partial (Phi-2's 0.4)
		{1, 3, 1, 6, 2, 1e6, 1000},
	}
	for _, c := range cases {
		x := randArray(rng, -2, 2, c.b, c.l, c.h, c.p)
		dy := randArray(rng, -1, 1, c.b, c.l, c.h, c.p)
		fd := denseFDGrad(t, x, dy, func(x *Array) (*Array, error) { return RoPE(x, c.rot, c.theta, c.pos0) })
		denseCheck(t, "rope backward", denseMust(t)(RoPEInverse(dy, c.rot, c.theta, c.pos0)), fd, denseFDTol)
		back := denseMust(t)(RoPEInverse(denseMust(t)(RoPE(x, c.rot, c.theta, c.pos0)), c.rot, c.theta, c.pos0))
		denseCheck(t, "ropeinverse∘rope", back, x, 1e-14)
		fwd := denseMust(t)(RoPE(denseMust(t)(RoPEInverse(x, c.rot, c.theta, c.pos0)), c.rot, c.theta, c.pos0))
		denseCheck(t, "rope∘ropeinverse", fwd, x, 1e-14)
		// Dims past the rotary ones are untouched.
		inv := denseMust(t)(RoPEInverse(x, c.rot, c.theta, c.pos0))
		for r := 0; r < x.Len(); r += c.p {
			if !slices.Equal(inv.Data[r+c.rot:r+c.p], x.Data[r+c.rot:r+c.p]) {
				t.Fatalf("%+v: ropeinverse changed dims past the rotary ones", c)
			}
		}
	}
	if _, err := RoPEInverse(New(1, 2, 1, 4), 3, 1e4, 0); err == nil {
		t.Error("ropeinverse with an odd rotary dim: no error")
	}
}

func TestSumHeadsAndSetColsFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(81, 7))
	for _, c := range []struct{ rows, srcHeads, heads, dim int }{{3, 2, 6, 4}, {5, 3, 3, 2}, {2, 1, 4, 3}} {
		src := randArray(rng, -1, 1, c.rows, c.srcHeads*c.dim)
		dy := randArray(rng, -1, 1, c.rows, c.heads*c.dim)
		fd := denseFDGrad(t, src, dy, func(s *Array) (*Array, error) { return RepeatHeads(s, c.srcHeads, c.heads, c.dim) })
		got := denseMust(t)(SumHeads(dy, c.srcHeads, c.heads, c.dim))
		if !slices.Equal(got.Shape, src.Shape) {
			t.Errorf("%+v: sumheads shape %v, want %v", c, got.Shape, src.Shape)
		}
		denseCheck(t, "sumheads", got, fd, denseFDTol)
	}
	if _, err := SumHeads(New(2, 12), 4, 6, 2); err == nil {
		t.Error("sumheads with heads not a multiple of srcHeads: no error")
	}

	src := randArray(rng, -1, 1, 2, 3, 10)
	dy := randArray(rng, -1, 1, 2, 3, 4)
	fd := denseFDGrad(t, src, dy, func(s *Array) (*Array, error) { return SliceCols(s, 5, 4) })
	denseCheck(t, "setcols as slicecols' backward", denseMust(t)(SetCols(New(2, 3, 10), dy, 5)), fd, denseFDTol)
	// The other columns are dst's.
	dst := randArray(rng, -1, 1, 6, 10)
	got := denseMust(t)(SetCols(dst, dy, 5))
	for r := range 6 {
		row, was := got.Data[r*10:(r+1)*10], dst.Data[r*10:(r+1)*10]
		if !slices.Equal(row[:5], was[:5]) || !slices.Equal(row[9:], was[9:]) || !slices.Equal(row[5:9], dy.Data[r*4:(r+1)*4]) {
			t.Fatalf("setcols row %d: %v from dst %v and src %v", r, row, was, dy.Data[r*4:(r+1)*4])
		}
	}
	if _, err := SetCols(dst, dy, 7); err == nil {
		t.Error("setcols past the end: no error")
	}
	if _, err := SetCols(New(5, 10), dy, 0); err == nil {
		t.Error("setcols with different row counts: no error")
	}
}

// ---------------------------------------------------------------------------
// Dropout. The mask rule is the contract a device backend must reproduce
// bit for bit; the tests below restate it independently of math/rand/v2
// (PCG-DXSM by hand, sequential and by jump-ahead) and pin one case with
// literal bits.

// u128 is an unsigned 128-bit integer.
type u128 struct{ hi, lo uint64 }

func (a u128) mul(b u128) u128 {
	hi, lo := bits.Mul64(a.lo, b.lo)
	return u128{hi + a.hi*b.lo + a.lo*b.hi, lo}
}

func (a u128) add(b u128) u128 {
	lo, c := bits.Add64(a.lo, b.lo, 0)
	hi, _ := bits.Add64(a.hi, b.hi, c)
	return u128{hi, lo}
}

// The 128-bit LCG of PCG-DXSM: state ← state·pcgMul + pcgInc (mod 2¹²⁸).
var (
	pcgMul = u128{2549297995355413924, 4865540595714422341}
	pcgInc = u128{6364136223846793005, 1442695040888963407}
)

// pcgOutput is DXSM ("double xorshift multiply") of a state just advanced.
func pcgOutput(s u128) uint64 {
	hi := s.hi
	hi ^= hi >> 32
	hi *= 0xda942042e4dd58b5
	hi ^= hi >> 48
	return hi * (s.lo | 1)
}

// pcgAdvance returns the state n steps after s in O(log n) (Brown's
// jump-ahead for an LCG): how a device thread reaches element j directly.
func pcgAdvance(s u128, n uint64) u128 {
	accMul, accPlus := u128{0, 1}, u128{}
	curMul, curPlus := pcgMul, pcgInc
	for ; n > 0; n >>= 1 {
		if n&1 != 0 {
			accMul = accMul.mul(curMul)
			accPlus = accPlus.mul(curMul).add(curPlus)
		}
		curPlus = curMul.add(u128{0, 1}).mul(curPlus)
		curMul = curMul.mul(curMul)
	}
	return accMul.mul(s).add(accPlus)
}

// splitmix64ByHand restates SplitMix64 from its constants.
func splitmix64ByHand(x uint64) uint64 {
	z := x + 0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

func TestDropoutMaskRule(t *testing.T) {
	const rows, cols = 7, 300
	for _, c := range []struct {
		seed uint64
		prob float64
	}{{0, 0.1}, {0x5eed, 0.5}, {math.MaxUint64, 0.9}, {12345, 0}} {
		kept, err := DropoutKept(rows, cols, c.seed, c.prob)
		if err != nil {
			t.Fatal(err)
		}
		thr := uint64(c.prob * (1 << 53))
		for i := range rows {
			s := u128{c.seed, splitmix64ByHand(uint64(i))}
			for j := range cols {
				s = s.mul(pcgMul).add(pcgInc)
				want := pcgOutput(s)>>11 >= thr
				jump := pcgOutput(pcgAdvance(u128{c.seed, splitmix64ByHand(uint64(i))}, uint64(j+1)))>>11 >= thr
				if kept[i*cols+j] != want || jump != want {
					t.Fatalf("seed %#x prob %g element (%d,%d): kept %v, by hand %v, by jump-ahead %v", c.seed, c.prob, i, j, kept[i*cols+j], want, jump)
				}
			}
		}
	}
}

// A literal case: seed 0x5eed, prob 0.3, 3 rows of 70 elements; bit j of
// word j/64 of a row is set when element j is kept.
func TestDropoutGolden(t *testing.T) {
	want := [3][2]uint64{
		{0x4ecddab0aedafd8e, 0x37},
		{0xbd73fc8b9df71d73, 0x1d},
		{0x3ab7ef25cdaeafdb, 0x12},
	}
	kept, err := DropoutKept(3, 70, 0x5eed, 0.3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		var got [2]uint64
		for j := range 70 {
			if kept[i*70+j] {
				got[j/64] |= 1 << (j % 64)
			}
		}
		if got != want[i] {
			t.Errorf("row %d: kept bits %#016x %#x, want %#016x %#x", i, got[0], got[1], want[i][0], want[i][1])
		}
	}
	if SplitMix64(0) != 0xe220a8397b1dcdaf || SplitMix64(1) != 0x910a2dec89025cc1 {
		t.Errorf("SplitMix64(0), (1) = %#x, %#x", SplitMix64(0), SplitMix64(1))
	}
}

func TestDropout(t *testing.T) {
	rng := rand.New(rand.NewPCG(81, 8))
	const rows, cols = 500, 1000
	for _, prob := range []float64{0.1, 0.5} {
		kept, err := DropoutKept(rows, cols, 42, prob)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, k := range kept {
			if k {
				n++
			}
		}
		// Within 5 standard deviations of 1−p.
		frac, sd := float64(n)/(rows*cols), math.Sqrt(prob*(1-prob)/(rows*cols))
		if math.Abs(frac-(1-prob)) > 5*sd {
			t.Errorf("prob %g: kept fraction %.5f, want %.5f ± %.5f", prob, frac, 1-prob, 5*sd)
		}
		again, _ := DropoutKept(rows, cols, 42, prob)
		if !slices.Equal(kept, again) {
			t.Errorf("prob %g: two draws of one seed differ", prob)
		}
		other, _ := DropoutKept(rows, cols, 43, prob)
		if slices.Equal(kept, other) {
			t.Errorf("prob %g: seeds 42 and 43 give one mask", prob)
		}
		// Row i's mask does not depend on how many rows there are.
		few, _ := DropoutKept(3, cols, 42, prob)
		if !slices.Equal(few, kept[:3*cols]) {
			t.Errorf("prob %g: the first rows depend on the row count", prob)
		}
	}

	x := randArray(rng, 0.5, 2, 2, 5, 40)
	out, err := Dropout(x, 9, 0.25)
	if err != nil {
		t.Fatal(err)
	}
	kept, _ := DropoutKept(10, 40, 9, 0.25)
	for i, k := range kept {
		want := 0.0
		if k {
			want = x.Data[i] / 0.75
		}
		if math.Abs(out.Data[i]-want) > 1e-15*math.Abs(want) {
			t.Fatalf("element %d: %g, want %g", i, out.Data[i], want)
		}
	}
	same, _ := Dropout(x, 9, 0)
	if relErr(same, x) != 0 {
		t.Error("dropout with prob 0 is not the identity")
	}
	for _, p := range []float64{1, -0.1, math.NaN(), 2} {
		if _, err := Dropout(x, 9, p); err == nil {
			t.Errorf("dropout with prob %g: no error", p)
		}
	}
}
