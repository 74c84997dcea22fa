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

// withDecodeSplitFrom runs f with the split-key threshold at minKeys.
func withDecodeSplitFrom(t *testing.T, minKeys int, f func()) {
	t.Helper()
	saved := decodeSplitMinKeys
	decodeSplitMinKeys = minKeys
	defer func() { decodeSplitMinKeys = saved }()
	f()
}

// TestDecodeSplits checks the split choice: the splits cover [0, lk)
// exactly with none empty, each at least decodeMinChunk keys unless there
// are fewer keys, at most decodeMaxSplits, and the grid aimed at
// decodeBlocksPerSM blocks a multiprocessor when the keys allow.
func TestDecodeSplits(t *testing.T) {
	for _, c := range []struct{ lk, rows, sms int }{
		{1, 1, 1}, {1, 32, 132}, {63, 32, 132}, {64, 32, 132}, {65, 32, 132},
		{1024, 32, 132}, {1025, 32, 132}, {4096, 32, 132}, {16384, 32, 132}, {32768, 32, 132},
		{32768, 1, 132}, {1 << 22, 1, 132}, {5000, 4096, 132}, {777, 3, 4},
	} {
		s, chunk := decodeSplits(c.lk, c.rows, c.sms)
		what := fmt.Sprintf("decodeSplits(lk %d, rows %d, sms %d) = %d splits of %d", c.lk, c.rows, c.sms, s, chunk)
		switch {
		case s < 1 || s > decodeMaxSplits:
			t.Errorf("%s: splits outside [1, %d]", what, decodeMaxSplits)
		case s*chunk < c.lk || (s-1)*chunk >= c.lk:
			t.Errorf("%s: do not cover %d keys with none empty", what, c.lk)
		case chunk < min(c.lk, decodeMinChunk):
			t.Errorf("%s: chunk under %d keys", what, decodeMinChunk)
		case s*c.rows < decodeBlocksPerSM*c.sms && s < c.lk/decodeMinChunk && s < decodeMaxSplits:
			t.Errorf("%s: %d blocks, fewer than the %d aimed at although the keys allow more splits", what, s*c.rows, decodeBlocksPerSM*c.sms)
		default:
			t.Log(what)
		}
	}
}

// TestDecodeAttention checks the split-key path of SoftmaxAttentionCached
// (threshold lowered to 1 key) against the float64 reference: lq 1–4,
// pos0 0 and large, odd cache lengths and lengths at chunk boundaries
// (many splits: the device's multiprocessor count raised to the H200's
// 132), GQA, head sizes 80, 128, 5 and 1, F32 and BF16 q/k/v, the rows past
// pos0+lq NaN, Phi-2's 32 heads × 80 over 2K and 4K keys. Tolerance 1e-5
// (float32).
func TestDecodeAttention(t *testing.T) {
	be := testBackend(t)
	const tol = 1e-5
	rng := rand.New(rand.NewPCG(81, 82))
	type tcase struct {
		b, lq, pos0, capacity, h, hkv, p int
		sms                              int // 0: the device's
		bf16                             bool
	}
	cases := []tcase{
		{b: 1, lq: 1, pos0: 0, capacity: 1, h: 2, hkv: 2, p: 8},
		{b: 1, lq: 1, pos0: 700, capacity: 703, h: 4, hkv: 4, p: 80},
		{b: 1, lq: 1, pos0: 700, capacity: 703, h: 4, hkv: 4, p: 80, bf16: true},
		{b: 2, lq: 2, pos0: 127, capacity: 130, h: 4, hkv: 2, p: 80, sms: 132},
		{b: 1, lq: 3, pos0: 0, capacity: 3, h: 3, hkv: 1, p: 16},
		{b: 1, lq: 4, pos0: 253, capacity: 257, h: 2, hkv: 1, p: 128, sms: 132},
		{b: 1, lq: 4, pos0: 253, capacity: 300, h: 2, hkv: 1, p: 128, bf16: true},
		{b: 3, lq: 1, pos0: 1000, capacity: 1024, h: 6, hkv: 3, p: 5, sms: 132},
		{b: 1, lq: 2, pos0: 191, capacity: 193, h: 8, hkv: 2, p: 1},
		{b: 1, lq: 1, pos0: 1999, capacity: 2000, h: 1, hkv: 1, p: 64, sms: 132},
		// Phi-2's attention layer at a decode step, the H200's grid.
		{b: 1, lq: 1, pos0: 4096, capacity: 4100, h: 32, hkv: 32, p: 80, sms: 132},
		{b: 1, lq: 1, pos0: 4096, capacity: 4097, h: 32, hkv: 32, p: 80, sms: 132, bf16: true},
		{b: 1, lq: 4, pos0: 2045, capacity: 2049, h: 32, hkv: 8, p: 80, sms: 132, bf16: true},
	}
	withDecodeSplitFrom(t, 1, func() {
		for _, c := range cases {
			if !useDecodeSplit(c.lq, c.pos0+c.lq) {
				t.Fatalf("%+v: the split-key path is not taken", c)
			}
			saved := be.sms
			if c.sms != 0 {
				be.sms = c.sms
			}
			splits, chunk := decodeSplits(c.pos0+c.lq, c.b*c.h, be.sms)
			for _, scale := range []float64{1 / math.Sqrt(float64(c.p)), 6} {
				sc := float64(float32(scale))
				arr := f32Array
				if c.bf16 {
					arr = bf16Array
				}
				qa, q := arr(t, be, rng, -1, 1, c.b, c.lq, c.h, c.p)
				ka, k := cacheArray(t, be, rng, c.bf16, c.b, c.capacity, c.hkv, c.p, c.pos0+c.lq)
				va, v := cacheArray(t, be, rng, c.bf16, c.b, c.capacity, c.hkv, c.p, c.pos0+c.lq)
				want, err := reference.SoftmaxAttentionCached(qa, ka, va, c.pos0, sc)
				if err != nil {
					t.Fatal(err)
				}
				out := poisoned(t, be, c.b, c.lq, c.h, c.p)
				if err := be.SoftmaxAttentionCached(out, q, k, v, c.pos0, float32(sc)); err != nil {
					t.Fatalf("%+v: %v", c, err)
				}
				e := conformance.RelErr(download(t, be, out), want.Data)
				what := fmt.Sprintf("%+v scale %.3g (%d splits of %d keys)", c, sc, splits, chunk)
				if e > tol {
					t.Errorf("%s: relative error %.3g > %g", what, e, tol)
				} else {
					t.Logf("%s: relative error %.3g", what, e)
				}
				for _, x := range []kernels.Tensor{q, k, v, out} {
					be.Free(x)
				}
			}
			be.sms = saved
		}
	})
}

// cacheArray draws a cache [b, capacity, hkv, p] uniform in [−1, 1) (bf16
// values when bf16), rows [valid, capacity) of each sequence NaN (the kernels
// must not read them), and uploads it as BF16 or F32.
func cacheArray(t *testing.T, be *Backend, rng *rand.Rand, bf16 bool, b, capacity, hkv, p, valid int) (*reference.Array, kernels.Tensor) {
	t.Helper()
	a := reference.New(b, capacity, hkv, p)
	width := hkv * p
	for i := range a.Data {
		v := float64(float32(-1 + 2*rng.Float64()))
		if bf16 {
			v = reference.BF16Value(reference.BF16Bits(v))
		}
		if (i/width)%capacity >= valid {
			v = math.NaN()
		}
		a.Data[i] = v
	}
	var x kernels.Tensor
	var err error
	if bf16 {
		bits := make([]uint16, a.Len())
		for i, v := range a.Data {
			bits[i] = reference.BF16Bits(v)
		}
		x, err = be.UploadBF16(bits, a.Shape...)
	} else {
		x, err = be.Upload(a.Float32(), kernels.F32, a.Shape...)
	}
	if err != nil {
		t.Fatal(err)
	}
	return a, x
}

// TestDecodeAttentionExtensions runs the conformance suite of the
// extensions with every SoftmaxAttentionCached of at most 4 queries on the
// split-key kernels.
func TestDecodeAttentionExtensions(t *testing.T) {
	if ok, why := Available(); !ok {
		t.Skipf("no CUDA device: %s; %s", why, howToRun)
	}
	withDecodeSplitFrom(t, 1, func() {
		conformance.RunExtensions(t, func() kernels.Backend {
			be, err := New(0)
			if err != nil {
				t.Fatalf("New(0): %v", err)
			}
			return be
		}, tolerances())
	})
}

// TestDecodeAttentionRepeatable runs the split-key path twice on the same
// inputs (Phi-2's layer, 3000 keys, the device's own grid): the merge adds
// the partials in split order, so the two outputs must be the same bits.
func TestDecodeAttentionRepeatable(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(83, 84))
	const keys, heads, p = 3000, 32, 80
	withDecodeSplitFrom(t, 1, func() {
		_, q := f32Array(t, be, rng, -1, 1, 1, 1, heads, p)
		_, k := cacheArray(t, be, rng, false, 1, keys, heads, p, keys)
		_, v := cacheArray(t, be, rng, false, 1, keys, heads, p, keys)
		var runs [2][]float32
		for i := range runs {
			out := poisoned(t, be, 1, 1, heads, p)
			if err := be.SoftmaxAttentionCached(out, q, k, v, keys-1, 0.125); err != nil {
				t.Fatal(err)
			}
			h, err := be.Download(out)
			if err != nil {
				t.Fatal(err)
			}
			runs[i] = h
			be.Free(out)
		}
		for i := range runs[0] {
			if math.Float32bits(runs[0][i]) != math.Float32bits(runs[1][i]) {
				t.Fatalf("element %d: %g then %g", i, runs[0][i], runs[1][i])
			}
		}
		for _, x := range []kernels.Tensor{q, k, v} {
			be.Free(x)
		}
	})
}
