package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
)

// The row and elementwise kernels of rowOpsV1 = false against the first
// kernels (rowOpsV1 = true) on the same fresh seeded inputs: the same bits
// where the arithmetic is unchanged (GELU, GELUBackward, Convert, AddBias,
// SliceCols, Dropout), a relative error of at most 2e-7 an element for the
// norms (the block sums add in another order), which are also checked
// against float64 references.

// withRowOps runs f with rowOpsV1 = v1 (and the second kernels that are
// off by default, convBackwardV2, on when v1 is false) and restores both.
func withRowOps[T any](v1 bool, f func() T) T {
	saved, savedConv := rowOpsV1, convBackwardV2
	rowOpsV1, convBackwardV2 = v1, !v1
	defer func() { rowOpsV1, convBackwardV2 = saved, savedConv }()
	return f()
}

// oldAndNew runs op under the first kernels, then the second, and returns
// both results (op uploads its own inputs from the same seed each time).
func oldAndNew(op func() []float64) (old, cur []float64) {
	return withRowOps(true, op), withRowOps(false, op)
}

// checkBits fails unless got and want hold the same float32 bits (NaNs of
// either sign or payload match each other).
func checkBits(t *testing.T, what string, got, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := float32(got[i]), float32(want[i])
		if math.Float32bits(g) != math.Float32bits(w) && !(g != g && w != w) {
			t.Fatalf("%s: element %d = %g (%#08x), want %g (%#08x)", what, i, g, math.Float32bits(g), w, math.Float32bits(w))
		}
	}
}

// checkElemRel fails when an element's relative error exceeds tol.
func checkElemRel(t *testing.T, what string, got, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", what, len(got), len(want))
	}
	worst := 0.0
	for i := range want {
		e := math.Abs(got[i]-want[i]) / math.Abs(want[i])
		if got[i] == want[i] {
			e = 0
		}
		if !(e <= tol) {
			t.Fatalf("%s: element %d = %g, want %g (relative error %.3g > %.3g)", what, i, got[i], want[i], e, tol)
		}
		worst = max(worst, e)
	}
	t.Logf("%s: largest relative error %.3g", what, worst)
}

// hostRandom draws n float32 values uniform in [lo, hi), never zero.
func hostRandom(rng *rand.Rand, n int, lo, hi float64) []float32 {
	h := make([]float32, n)
	for i := range h {
		for h[i] == 0 {
			h[i] = float32(lo + (hi-lo)*rng.Float64())
		}
	}
	return h
}

func upload(t *testing.T, be *Backend, h []float32, dt kernels.DType, shape ...int) kernels.Tensor {
	t.Helper()
	x, err := be.Upload(h, dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Free(x) })
	return x
}

// shifted is a view of t's memory starting one element in (so not 16-byte
// aligned), shaped shape: it exercises the scalar fallbacks.
func shifted(t *testing.T, x kernels.Tensor, shape ...int) kernels.Tensor {
	t.Helper()
	ct := x.(*Tensor)
	n := 1
	for _, d := range shape {
		n *= d
	}
	size := uint64(4)
	if ct.dtype == kernels.BF16 {
		size = 2
	}
	if n+1 > ct.n {
		t.Fatalf("shifted view of %d elements does not fit %d", n, ct.n)
	}
	return &Tensor{be: ct.be, ptr: ct.ptr + size, shape: shape, dtype: ct.dtype, n: n, owner: ct}
}

// layerNormRef is LayerNorm (mode 1) or RMSNorm of y·silu(z) (mode 0, z
// may be nil) over groups of group channels, in float64.
func layerNormRef(y, z, w, bias []float32, n, group int, eps float32, mode int) []float64 {
	out := make([]float64, len(y))
	v := make([]float64, group)
	for base := 0; base < len(y); base += group {
		c0 := base % n
		mean, ss := 0.0, 0.0
		for j := range group {
			v[j] = float64(y[base+j])
			if z != nil {
				zv := float64(z[base+j])
				v[j] *= zv / (1 + math.Exp(-zv))
			}
			mean += v[j]
		}
		mean /= float64(group)
		if mode == 0 {
			mean = 0
		}
		for j := range group {
			ss += (v[j] - mean) * (v[j] - mean)
		}
		inv := 1 / math.Sqrt(ss/float64(group)+float64(eps))
		for j := range group {
			r := (v[j] - mean) * inv * float64(w[c0+j])
			if bias != nil {
				r += float64(bias[c0+j])
			}
			out[base+j] = r
		}
	}
	return out
}

func TestRowOpsNorms(t *testing.T) {
	be := testBackend(t)
	for _, c := range []struct {
		kind       string // layer, rms, gated, gatednoz
		rows, n, g int
		bias, same bool // bias (layer); out aliases the input
		shift      bool // misaligned view of the input
	}{
		{"layer", 37, 2560, 2560, true, false, false},
		{"layer", 5, 1152, 1152, true, true, false},
		{"layer", 3, 1027, 1027, false, false, false}, // n not a multiple of 4
		{"layer", 4, 4096, 4096, true, false, false},
		{"layer", 3, 300, 300, true, false, true},
		{"layer", 2, 5000, 5000, true, false, false}, // above rowNormMax: k_group_norm
		{"rms", 9, 2560, 2560, false, true, false},
		{"rms", 6, 1030, 1030, false, false, false},
		{"gated", 11, 2048, 1024, false, false, false},
		{"gated", 7, 2048, 256, false, true, false},
		{"gated", 5, 1040, 260, false, false, false},
		{"gatednoz", 5, 1536, 512, false, false, false},
		{"gated", 4, 512, 64, false, false, false}, // below rowNormMin: k_group_norm
	} {
		name := fmt.Sprintf("%s_%dx%d_g%d_bias%v_alias%v_shift%v", c.kind, c.rows, c.n, c.g, c.bias, c.same, c.shift)
		t.Run(name, func(t *testing.T) {
			const eps = 1e-5
			var y, z, w, bias []float32
			run := func() []float64 {
				rng := rand.New(rand.NewPCG(uint64(c.rows*c.n), uint64(c.g)))
				y = hostRandom(rng, c.rows*c.n+1, -2, 3)
				w = hostRandom(rng, c.n, 0.5, 1.5)
				yt := upload(t, be, y, kernels.F32, c.rows*c.n+1)
				wt := upload(t, be, w, kernels.F32, c.n)
				var x kernels.Tensor
				if c.shift {
					x = shifted(t, yt, c.rows, c.n)
					y = y[1:]
				} else {
					x = &Tensor{be: be, ptr: yt.(*Tensor).ptr, shape: []int{c.rows, c.n}, dtype: kernels.F32, n: c.rows * c.n, owner: yt.(*Tensor)}
					y = y[:c.rows*c.n]
				}
				out := x
				if !c.same {
					out = poisoned(t, be, c.rows, c.n)
				}
				var err error
				switch c.kind {
				case "layer":
					var bt kernels.Tensor
					if c.bias {
						bias = hostRandom(rng, c.n, -1, 1)
						bt = upload(t, be, bias, kernels.F32, c.n)
					}
					err = be.LayerNorm(out, x, wt, bt, eps)
				case "rms":
					err = be.RMSNorm(out, x, wt, eps)
				case "gated", "gatednoz":
					var zt kernels.Tensor
					if c.kind == "gated" {
						z = hostRandom(rng, c.rows*c.n, -3, 3)
						zt = upload(t, be, z, kernels.F32, c.rows, c.n)
					}
					err = be.GatedRMSNorm(out, x, zt, wt, c.g, eps)
				}
				if err != nil {
					t.Fatal(err)
				}
				return download(t, be, out)
			}
			old, cur := oldAndNew(run)
			checkElemRel(t, "new vs old", cur, old, 2e-7)
			mode := 0
			if c.kind == "layer" {
				mode = 1
			}
			ref := layerNormRef(y, z, w, bias, c.n, c.g, eps, mode)
			checkElemRel(t, "new vs float64", cur, ref, 1e-6)
		})
	}
}

func TestRowOpsElementwise(t *testing.T) {
	be := testBackend(t)
	shapes := [][2]int{{13, 1027}, {8, 4096}, {1, 3}, {5, 12}}
	for _, sh := range shapes {
		rows, n := sh[0], sh[1]
		for _, form := range []kernels.GELUForm{kernels.GELUErf, kernels.GELUTanh} {
			for _, alias := range []bool{false, true} {
				t.Run(fmt.Sprintf("gelu_%dx%d_form%d_alias%v", rows, n, form, alias), func(t *testing.T) {
					old, cur := oldAndNew(func() []float64 {
						rng := rand.New(rand.NewPCG(uint64(rows), uint64(n)))
						x := upload(t, be, hostRandom(rng, rows*n, -6, 6), kernels.F32, rows, n)
						out := x
						if !alias {
							out = poisoned(t, be, rows, n)
						}
						if err := be.GELU(out, x, form); err != nil {
							t.Fatal(err)
						}
						return download(t, be, out)
					})
					checkBits(t, "gelu", cur, old)
				})
				t.Run(fmt.Sprintf("gelubackward_%dx%d_form%d_alias%v", rows, n, form, alias), func(t *testing.T) {
					old, cur := oldAndNew(func() []float64 {
						rng := rand.New(rand.NewPCG(uint64(rows)+7, uint64(n)))
						x := upload(t, be, hostRandom(rng, rows*n, -6, 6), kernels.F32, rows, n)
						dy := upload(t, be, hostRandom(rng, rows*n, -1, 1), kernels.F32, rows, n)
						dx := dy
						if !alias {
							dx = poisoned(t, be, rows, n)
						}
						if err := be.GELUBackward(dx, dy, x, form); err != nil {
							t.Fatal(err)
						}
						return download(t, be, dx)
					})
					checkBits(t, "gelubackward", cur, old)
				})
			}
		}
		t.Run(fmt.Sprintf("gelu_shifted_%dx%d", rows, n), func(t *testing.T) {
			old, cur := oldAndNew(func() []float64 {
				rng := rand.New(rand.NewPCG(uint64(rows)+1, uint64(n)))
				x := upload(t, be, hostRandom(rng, rows*n+1, -6, 6), kernels.F32, rows*n+1)
				out := poisoned(t, be, rows, n)
				if err := be.GELU(out, shifted(t, x, rows, n), kernels.GELUErf); err != nil {
					t.Fatal(err)
				}
				return download(t, be, out)
			})
			checkBits(t, "gelu", cur, old)
		})
		t.Run(fmt.Sprintf("convert_%dx%d", rows, n), func(t *testing.T) {
			for _, shift := range []bool{false, true} {
				old, cur := oldAndNew(func() []float64 {
					rng := rand.New(rand.NewPCG(uint64(rows)+2, uint64(n)))
					h := hostRandom(rng, rows*n+1, -100, 100)
					// Values at and around the bf16 rounding ties, and specials.
					special := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), math.MaxFloat32,
						math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), math.Float32frombits(0x3f807fff), 1e-40}
					for i := 0; i < len(special) && i < len(h); i++ {
						h[(i*7919)%len(h)] = special[i]
					}
					x := upload(t, be, h, kernels.F32, rows*n+1)
					src := shifted(t, x, rows, n)
					if !shift {
						src = &Tensor{be: be, ptr: x.(*Tensor).ptr, shape: []int{rows, n}, dtype: kernels.F32, n: rows * n, owner: x.(*Tensor)}
					}
					bf, err := be.Upload(make([]float32, rows*n), kernels.BF16, rows, n)
					if err != nil {
						t.Fatal(err)
					}
					defer be.Free(bf)
					if err := be.Convert(bf, src); err != nil {
						t.Fatal(err)
					}
					back := poisoned(t, be, rows, n)
					if err := be.Convert(back, bf); err != nil {
						t.Fatal(err)
					}
					return download(t, be, back)
				})
				checkBits(t, fmt.Sprintf("convert f32→bf16→f32 shifted %v", shift), cur, old)
			}
		})
		t.Run(fmt.Sprintf("addbias_%dx%d", rows, n), func(t *testing.T) {
			old, cur := oldAndNew(func() []float64 {
				rng := rand.New(rand.NewPCG(uint64(rows)+3, uint64(n)))
				x := upload(t, be, hostRandom(rng, rows*n, -4, 4), kernels.F32, rows, n)
				b := upload(t, be, hostRandom(rng, n, -1, 1), kernels.F32, n)
				if err := be.AddBias(x, b); err != nil {
					t.Fatal(err)
				}
				return download(t, be, x)
			})
			checkBits(t, "addbias", cur, old)
		})
		t.Run(fmt.Sprintf("dropout_%dx%d", rows, n), func(t *testing.T) {
			for _, alias := range []bool{false, true} {
				old, cur := oldAndNew(func() []float64 {
					rng := rand.New(rand.NewPCG(uint64(rows)+4, uint64(n)))
					x := upload(t, be, hostRandom(rng, rows*n, -4, 4), kernels.F32, rows, n)
					out := x
					if !alias {
						out = poisoned(t, be, rows, n)
					}
					if err := be.Dropout(out, x, 0x9e3779b97f4a7c15^uint64(n), 0.1); err != nil {
						t.Fatal(err)
					}
					return download(t, be, out)
				})
				checkBits(t, fmt.Sprintf("dropout alias %v", alias), cur, old)
				zeros := 0
				for _, v := range cur {
					if v == 0 {
						zeros++
					}
				}
				if len(cur) >= 1000 && (zeros == 0 || zeros > len(cur)/5) {
					t.Errorf("dropout kept %d of %d elements at p = 0.1", len(cur)-zeros, len(cur))
				}
			}
		})
	}
	for _, c := range []struct{ rows, scols, col0, cols int }{
		{29, 100, 4, 40}, {29, 100, 3, 41}, {7, 2560, 1280, 1280}, {3, 10, 0, 10},
	} {
		t.Run(fmt.Sprintf("slicecols_%dx%d_%d+%d", c.rows, c.scols, c.col0, c.cols), func(t *testing.T) {
			old, cur := oldAndNew(func() []float64 {
				rng := rand.New(rand.NewPCG(uint64(c.rows), uint64(c.col0)))
				src := upload(t, be, hostRandom(rng, c.rows*c.scols, -4, 4), kernels.F32, c.rows, c.scols)
				out := poisoned(t, be, c.rows, c.cols)
				if err := be.SliceCols(out, src, c.col0); err != nil {
					t.Fatal(err)
				}
				return download(t, be, out)
			})
			checkBits(t, "slicecols", cur, old)
		})
	}
}
