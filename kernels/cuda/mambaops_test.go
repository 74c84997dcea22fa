package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

// The Mamba-path and norm-backward kernels of rowOpsV1 = false
// (k_causal_conv1d2, k_conv1d_bwd2, k_dt_softplus_bwd2, k_gated_norm_bwd_w,
// k_norm_backward_v) against the ones they replace, on the same fresh
// seeded inputs: the same bits for the conv forward, du, dt softplus, the
// gated norm's dy and dz (and dweight: the same runs of rows) and the norm
// backwards; at most 2e-7 relative an element for the conv's dweight and
// dbias (block sums grouped otherwise). Also against float64 references.

// refArray is h (float32 values) as a reference array of shape.
func refArray(h []float32, shape ...int) *reference.Array {
	a := reference.New(shape...)
	for i, v := range h {
		a.Data[i] = float64(v)
	}
	return a
}

// checkNormwise fails when max|got − want| exceeds tol·max|want|.
func checkNormwise(t *testing.T, what string, got, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	e, m := 0.0, 0.0
	for i := range want {
		e = max(e, math.Abs(got[i]-want[i]))
		m = max(m, math.Abs(want[i]))
	}
	if !(e <= tol*m) {
		t.Fatalf("%s: max error %.3g against max |value| %.3g (> %.3g relative)", what, e, m, tol)
	}
}

func TestMambaOpsConv(t *testing.T) {
	be := testBackend(t)
	for _, c := range []struct {
		nb, l, ch, k   int
		bias, silu, sh bool
	}{
		{2, 37, 20, 4, true, true, false}, // 4 channels a thread
		{1, 70, 13, 3, true, true, false}, // channels not a multiple of 4
		{3, 5, 8, 2, false, true, false},  // shorter than a segment, no bias
		{1, 41, 12, 8, true, false, false},
		{2, 33, 16, 4, true, true, true}, // unaligned: one channel a thread
		{1, 100, 132, 1, true, true, false},
		{1, 300, 8, 4, true, true, false},  // more than 8 segments: several blocks of segments
		{3, 100, 12, 3, true, true, false}, // segments of three batch rows in one block
	} {
		t.Run(fmt.Sprintf("%dx%dx%d_k%d_bias%v_silu%v_shift%v", c.nb, c.l, c.ch, c.k, c.bias, c.silu, c.sh), func(t *testing.T) {
			n := c.nb * c.l * c.ch
			seed := uint64(c.nb*1000 + c.l*10 + c.k)
			rng := rand.New(rand.NewPCG(seed, 7))
			hu, hg := hostRandom(rng, n+1, -2, 2), hostRandom(rng, n, -1, 1)
			hw, hb := hostRandom(rng, c.ch*c.k, -1, 1), hostRandom(rng, c.ch, -0.5, 0.5)
			hdw, hdb := hostRandom(rng, c.ch*c.k, -1, 1), hostRandom(rng, c.ch, -1, 1)
			shape := []int{c.nb, c.l, c.ch}
			run := func() [][]float64 {
				u := upload(t, be, hu[:n], kernels.F32, shape...)
				if c.sh {
					u = shifted(t, upload(t, be, hu, kernels.F32, n+1), shape...)
				}
				dout, w := upload(t, be, hg, kernels.F32, shape...), upload(t, be, hw, kernels.F32, c.ch, c.k)
				var bias kernels.Tensor
				if c.bias {
					bias = upload(t, be, hb, kernels.F32, c.ch)
				}
				dw, db := upload(t, be, hdw, kernels.F32, c.ch, c.k), upload(t, be, hdb, kernels.F32, c.ch)
				out, du := poisoned(t, be, shape...), poisoned(t, be, shape...)
				defer be.Free(out)
				defer be.Free(du)
				if err := be.CausalConv1d(out, u, w, bias, c.silu); err != nil {
					t.Fatal(err)
				}
				if err := be.CausalConv1dBackward(du, dw, db, dout, u, w, bias, c.silu); err != nil {
					t.Fatal(err)
				}
				return [][]float64{download(t, be, out), download(t, be, du), download(t, be, dw), download(t, be, db)}
			}
			old, cur := oldAndNew2(run)
			checkBits(t, "out", cur[0], old[0])
			checkBits(t, "du", cur[1], old[1])
			checkElemRel(t, "dweight", cur[2], old[2], 2e-7)
			checkElemRel(t, "dbias", cur[3], old[3], 2e-7)

			// Against float64.
			ua := refArray(hu[:n], shape...)
			if c.sh {
				ua = refArray(hu[1:], shape...)
			}
			wa, ga := refArray(hw, c.ch, c.k), refArray(hg, shape...)
			var ba *reference.Array
			if c.bias {
				ba = refArray(hb, c.ch)
			}
			ref, err := reference.CausalConv1d(ua, wa, ba, c.silu)
			if err != nil {
				t.Fatal(err)
			}
			checkNormwise(t, "out vs float64", cur[0], ref.Data, 1e-6)
			rdu, rdw, rdb, err := reference.CausalConv1dBackward(ga, ua, wa, ba, c.silu)
			if err != nil {
				t.Fatal(err)
			}
			checkNormwise(t, "du vs float64", cur[1], rdu.Data, 1e-6)
			for i := range rdw.Data {
				rdw.Data[i] += float64(hdw[i])
			}
			for i := range rdb.Data {
				rdb.Data[i] += float64(hdb[i])
			}
			checkNormwise(t, "dweight vs float64", cur[2], rdw.Data, 1e-6)
			checkNormwise(t, "dbias vs float64", cur[3], rdb.Data, 1e-6)
		})
	}
}

// oldAndNew2 is oldAndNew for operations with several results.
func oldAndNew2(op func() [][]float64) (old, cur [][]float64) {
	return withRowOps(true, op), withRowOps(false, op)
}

func TestMambaOpsDtSoftplus(t *testing.T) {
	be := testBackend(t)
	for _, c := range []struct {
		rows, h     int
		bias, alias bool
	}{{37, 5, true, false}, {16, 32, true, true}, {3, 7, false, false}, {100, 3, true, true}} {
		t.Run(fmt.Sprintf("%dx%d_bias%v_alias%v", c.rows, c.h, c.bias, c.alias), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(c.rows), uint64(c.h)))
			hg, hr := hostRandom(rng, c.rows*c.h, -1, 1), hostRandom(rng, c.rows*c.h, -4, 4)
			hb, hdb := hostRandom(rng, c.h, -1, 1), hostRandom(rng, c.h, -1, 1)
			run := func() [][]float64 {
				ddt, raw := upload(t, be, hg, kernels.F32, c.rows, c.h), upload(t, be, hr, kernels.F32, c.rows, c.h)
				var bias kernels.Tensor
				if c.bias {
					bias = upload(t, be, hb, kernels.F32, c.h)
				}
				db := upload(t, be, hdb, kernels.F32, c.h)
				out := ddt
				if !c.alias {
					out = poisoned(t, be, c.rows, c.h)
					defer be.Free(out)
				}
				if err := be.DtSoftplusBackward(out, db, ddt, raw, bias); err != nil {
					t.Fatal(err)
				}
				return [][]float64{download(t, be, out), download(t, be, db)}
			}
			old, cur := oldAndNew2(run)
			checkBits(t, "dRaw", cur[0], old[0])
			checkBits(t, "dbias", cur[1], old[1])
			var ba *reference.Array
			if c.bias {
				ba = refArray(hb, c.h)
			}
			rd, rdb, err := reference.DtSoftplusBackward(refArray(hg, c.rows, c.h), refArray(hr, c.rows, c.h), ba)
			if err != nil {
				t.Fatal(err)
			}
			for i := range rdb.Data {
				rdb.Data[i] += float64(hdb[i])
			}
			checkNormwise(t, "dRaw vs float64", cur[0], rd.Data, 1e-6)
			checkNormwise(t, "dbias vs float64", cur[1], rdb.Data, 1e-6)
		})
	}
}

func TestMambaOpsGatedNorm(t *testing.T) {
	be := testBackend(t)
	for _, c := range []struct {
		rows, width, gs int
		z               bool
	}{{19, 320, 80, true}, {7, 132, 33, true}, {23, 512, 256, false}, {5, 600, 300, true}, {40, 64, 16, true}, {3, 96, 32, false}} {
		t.Run(fmt.Sprintf("%dx%d_g%d_z%v", c.rows, c.width, c.gs, c.z), func(t *testing.T) {
			n := c.rows * c.width
			rng := rand.New(rand.NewPCG(uint64(n), uint64(c.gs)))
			hg, hy, hz := hostRandom(rng, n, -1, 1), hostRandom(rng, n, -2, 2), hostRandom(rng, n, -3, 3)
			hw, hdw := hostRandom(rng, c.width, 0.5, 1.5), hostRandom(rng, c.width, -1, 1)
			run := func() [][]float64 {
				dout, y := upload(t, be, hg, kernels.F32, c.rows, c.width), upload(t, be, hy, kernels.F32, c.rows, c.width)
				w, dw := upload(t, be, hw, kernels.F32, c.width), upload(t, be, hdw, kernels.F32, c.width)
				var z, dz kernels.Tensor
				if c.z {
					z, dz = upload(t, be, hz, kernels.F32, c.rows, c.width), poisoned(t, be, c.rows, c.width)
					defer be.Free(dz)
				}
				dy := poisoned(t, be, c.rows, c.width)
				defer be.Free(dy)
				if err := be.GatedRMSNormBackward(dy, dz, dw, dout, y, z, w, c.gs, 1e-5); err != nil {
					t.Fatal(err)
				}
				r := [][]float64{download(t, be, dy), download(t, be, dw), nil}
				if c.z {
					r[2] = download(t, be, dz)
				}
				return r
			}
			old, cur := oldAndNew2(run)
			checkElemRel(t, "dy", cur[0], old[0], 2e-7)
			checkElemRel(t, "dweight", cur[1], old[1], 2e-7)
			if c.z {
				checkElemRel(t, "dz", cur[2], old[2], 2e-7)
			}
			var za *reference.Array
			if c.z {
				za = refArray(hz, c.rows, c.width)
			}
			rdy, rdz, rdw, err := reference.GatedRMSNormBackward(refArray(hg, c.rows, c.width), refArray(hy, c.rows, c.width), za, refArray(hw, c.width), c.gs, 1e-5)
			if err != nil {
				t.Fatal(err)
			}
			for i := range rdw.Data {
				rdw.Data[i] += float64(hdw[i])
			}
			checkNormwise(t, "dy vs float64", cur[0], rdy.Data, 1e-6)
			checkNormwise(t, "dweight vs float64", cur[1], rdw.Data, 1e-6)
			if c.z {
				checkNormwise(t, "dz vs float64", cur[2], rdz.Data, 1e-6)
			}
		})
	}
}

func TestMambaOpsNormBackward(t *testing.T) {
	be := testBackend(t)
	for _, c := range []struct {
		rows, n int
		layer   bool
		alias   string
	}{{5, 2560, true, ""}, {3, 1000, true, "dy"}, {4, 80, false, "x"}, {2, 4097, true, ""}, {6, 257, false, ""}, {3, 3072, false, "dy"}} {
		t.Run(fmt.Sprintf("%dx%d_layer%v_alias%s", c.rows, c.n, c.layer, c.alias), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(c.rows*c.n), 3))
			hdy, hx, hw := hostRandom(rng, c.rows*c.n, -1, 1), hostRandom(rng, c.rows*c.n, -2, 3), hostRandom(rng, c.n, 0.5, 1.5)
			run := func() []float64 {
				dy, x, w := upload(t, be, hdy, kernels.F32, c.rows, c.n), upload(t, be, hx, kernels.F32, c.rows, c.n), upload(t, be, hw, kernels.F32, c.n)
				var dx kernels.Tensor
				switch c.alias {
				case "dy":
					dx = dy
				case "x":
					dx = x
				default:
					dx = poisoned(t, be, c.rows, c.n)
					defer be.Free(dx)
				}
				var err error
				if c.layer {
					err = be.LayerNormBackward(dx, dy, x, w, 1e-5)
				} else {
					err = be.RMSNormBackward(dx, dy, x, w, 1e-5)
				}
				if err != nil {
					t.Fatal(err)
				}
				return download(t, be, dx)
			}
			old, cur := oldAndNew(run)
			checkBits(t, "dx", cur, old)
			var ref *reference.Array
			var err error
			if c.layer {
				ref, err = reference.LayerNormBackward(refArray(hdy, c.rows, c.n), refArray(hx, c.rows, c.n), refArray(hw, c.n), 1e-5)
			} else {
				ref, err = reference.RMSNormBackward(refArray(hdy, c.rows, c.n), refArray(hx, c.rows, c.n), refArray(hw, c.n), 1e-5)
			}
			if err != nil {
				t.Fatal(err)
			}
			checkNormwise(t, "dx vs float64", cur, ref.Data, 1e-6)
		})
	}
}

// TestDropoutJumpCache: the jump table is made once per row length and
// kept; a cached table gives the bits of a fresh one.
func TestDropoutJumpCache(t *testing.T) {
	be := testBackend(t)
	rng := rand.New(rand.NewPCG(5, 6))
	hx := hostRandom(rng, 6*40, -1, 1)
	drop := func(d int) []float64 {
		x := upload(t, be, hx[:6*d], kernels.F32, 6, d)
		out := poisoned(t, be, 6, d)
		defer be.Free(out)
		if err := be.Dropout(out, x, 99, 0.3); err != nil {
			t.Fatal(err)
		}
		return download(t, be, out)
	}
	tables := func() int {
		n := 0
		if err := be.do("count", func() error { n = len(be.pcgJump); return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	n0 := tables()
	first := drop(40)
	drop(17)
	again := drop(40)
	checkBits(t, "dropout with the cached table", again, first)
	if got := tables() - n0; got > 2 {
		t.Fatalf("%d jump tables made for 2 row lengths", got)
	}
}
