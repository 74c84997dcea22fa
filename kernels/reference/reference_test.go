package reference

import (
	"math"
	"math/rand/v2"
	"testing"
)

func randArray(rng *rand.Rand, lo, hi float64, shape ...int) *Array {
	a := New(shape...)
	for i := range a.Data {
		a.Data[i] = lo + (hi-lo)*rng.Float64()
	}
	return a
}

func relErr(got, want *Array) float64 {
	var num, den float64
	for i := range want.Data {
		d := got.Data[i] - want.Data[i]
		num += d * d
		den += want.Data[i] * want.Data[i]
	}
	return math.Sqrt(num / den)
}

// The chunked algorithm must equal the recurrence to float64 rounding, for
// chunks that do and do not divide the length, with a state in and out.
func TestSSDChunkedMatchesRecurrence(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const nb, l, H, P, G, N = 2, 13, 4, 3, 2, 5
	x := randArray(rng, -1, 1, nb, l, H, P)
	dt := randArray(rng, 0.01, 0.5, nb, l, H)
	A := randArray(rng, -3, -0.1, H)
	B := randArray(rng, -1, 1, nb, l, G, N)
	C := randArray(rng, -1, 1, nb, l, G, N)
	D := randArray(rng, 0.5, 1.5, H)
	s0 := randArray(rng, -1, 1, nb, H, P, N)
	yr, sr, err := SSDRecurrence(x, dt, A, B, C, D, s0)
	if err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []int{1, 4, 5, 13, 20} {
		yc, sc, err := SSDChunked(x, dt, A, B, C, D, s0, chunk)
		if err != nil {
			t.Fatal(err)
		}
		if e := relErr(yc, yr); e > 1e-13 {
			t.Errorf("chunk %d: y rel err %g", chunk, e)
		}
		if e := relErr(sc, sr); e > 1e-13 {
			t.Errorf("chunk %d: state rel err %g", chunk, e)
		}
	}
}

// In the linear-attention limit (A = 0, dt = 1, D = 0, groups = heads) the
// recurrence is causal softmax-free attention with x = v, B = k, C = q.
func TestSSDLinearAttentionLimit(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const nb, l, H, P = 2, 9, 3, 4
	q := randArray(rng, -1, 1, nb, l, H, P)
	k := randArray(rng, -1, 1, nb, l, H, P)
	v := randArray(rng, -1, 1, nb, l, H, P)
	dt := New(nb, l, H)
	for i := range dt.Data {
		dt.Data[i] = 1
	}
	y, _, err := SSDRecurrence(v, dt, New(H), k, q, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	o, err := LinearAttention(q, k, v)
	if err != nil {
		t.Fatal(err)
	}
	if e := relErr(y, o); e > 1e-14 {
		t.Errorf("rel err %g", e)
	}
}

func TestBF16Rounding(t *testing.T) {
	cases := []struct {
		in   float32
		want uint16
	}{
		{1, 0x3F80},
		{math.Float32frombits(0x3F808000), 0x3F80}, // tie, even stays
		{math.Float32frombits(0x3F818000), 0x3F82}, // tie, odd rounds up
		{math.Float32frombits(0x3F808001), 0x3F81}, // above tie
		{float32(math.Inf(-1)), 0xFF80},
		{math.MaxFloat32, 0x7F80}, // rounds up to +Inf, as PyTorch does
	}
	for _, c := range cases {
		if got := BF16Bits(float64(c.in)); got != c.want {
			t.Errorf("BF16Bits(%g) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	if v := BF16Value(BF16Bits(math.NaN())); !math.IsNaN(v) {
		t.Errorf("NaN rounds to %g", v)
	}
}

func TestShapeErrors(t *testing.T) {
	a := New(2, 3)
	if _, err := MatMul(a, New(4, 2), true); err == nil {
		t.Error("matmul with mismatched inner dims: no error")
	}
	if _, err := Add(a, New(3, 2)); err == nil {
		t.Error("add of different shapes: no error")
	}
	if _, err := RoPE(New(1, 2, 1, 4), 3, 1e4, 0); err == nil {
		t.Error("odd rotary dim: no error")
	}
	if _, err := GatedRMSNorm(a, nil, New(3), 2, 1e-5); err == nil {
		t.Error("group size not dividing: no error")
	}
}
