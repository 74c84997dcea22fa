package model

import (
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/cpu"
)

// bf16Tol bounds the bf16-precision logits' relative 2-norm error against
// the float64 PyTorch forward on the fixtures (measured on the CPU: 3.5e-3
// phi, 4.5e-3 phi-h25, 1.7e-3 qwen2-h25; one bf16 rounding is at most
// 2^-9 ≈ 2e-3 relative, and the activations of the fixtures' 8 layers are
// rounded 3–4 times a layer on the way).
const bf16Tol = 1e-2

// precisionFixtures: the fixtures whose matrices are BF16 (phi), and the
// qwen2 hybrid (F16 weights, so uploaded as F32: in bf16 only its scans'
// inputs are rounded).
var precisionFixtures = []struct{ golden, dir string }{
	{"phi", "phi-tiny"}, {"phi-h25", "phi-tiny-h25"}, {"qwen2-h25", "qwen2-tiny-h25"},
}

// In bf16 precision the logits stay close to the float64 forward and to
// the f32 precision's; incremental decode still equals recomputing (the
// rounding points are per row, so decode and prefill round the same
// values), with and without the backend's extensions.
func TestBF16LogitsCloseToF32(t *testing.T) {
	for _, fx := range precisionFixtures {
		for _, plain := range []bool{false, true} {
			name := fx.golden
			if plain {
				name += "/no-extensions"
			}
			t.Run(name, func(t *testing.T) {
				g := openGolden(t, fx.golden)
				pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
				want := g.f64("logits")
				f32 := load(t, fx.dir, Options{}, plain)
				lf, err := f32.Forward(pixels, ids)
				if err != nil {
					t.Fatal(err)
				}
				ref := download(t, f32.Backend(), lf)
				checkRel(t, "f32 logits vs float64", ref, want, goldenTol)

				m := load(t, fx.dir, Options{Precision: PrecisionBF16}, plain)
				if m.Precision() != PrecisionBF16 {
					t.Fatalf("Precision() = %q", m.Precision())
				}
				lb, err := m.Forward(pixels, ids)
				if err != nil {
					t.Fatal(err)
				}
				full := download(t, m.Backend(), lb)
				checkRel(t, "bf16 logits vs float64", full, want, bf16Tol)
				checkRel(t, "bf16 logits vs f32", full, widen(ref), bf16Tol)
				if slices.Equal(full, ref) {
					t.Error("bf16 logits equal the f32 logits bit for bit: nothing was rounded")
				}

				n, vocab := len(ids), m.sizes.vocab
				L := m.SequenceLength(ids)
				last, err := m.Prefill(pixels, ids[:n-3])
				if err != nil {
					t.Fatal(err)
				}
				rows := [][]float32{last}
				for _, id := range ids[n-3:] {
					v, err := m.Step(id)
					if err != nil {
						t.Fatal(err)
					}
					rows = append(rows, v)
				}
				for k, v := range rows {
					checkRel(t, "bf16 decode vs bf16 forward", v, widen(full[(L-4+k)*vocab:(L-3+k)*vocab]), decodeTol)
				}
			})
		}
	}
}

// Products with float32 weights are not touched by bf16 precision: the
// F32 and F16 teachers (uploaded as F32) give the f32 logits bit for bit.
func TestBF16LeavesF32WeightsAlone(t *testing.T) {
	for _, fx := range []struct{ golden, dir string }{{"qwen2", "qwen2-tiny"}, {"llama", "llama-tiny"}} {
		t.Run(fx.golden, func(t *testing.T) {
			g := openGolden(t, fx.golden)
			pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
			var got [2][]float32
			for i, p := range []Precision{PrecisionF32, PrecisionBF16} {
				m := load(t, fx.dir, Options{Precision: p}, false)
				l, err := m.Forward(pixels, ids)
				if err != nil {
					t.Fatal(err)
				}
				got[i] = download(t, m.Backend(), l)
			}
			if !slices.Equal(got[0], got[1]) {
				t.Errorf("bf16 changed a model without bf16 weights (relative %.3g)", relErr(got[1], widen(got[0])))
			}
		})
	}
}

// spyBackend is the CPU backend recording the dtypes of every MatMul's
// operands, the conversions, and whether the scans' x, B and C hold only
// bf16 values.
type spyBackend struct {
	*cpu.Backend
	pairs         map[[2]kernels.DType]int
	converts      int
	scans         int
	scanNotBF16   int // scans given an x, B or C value that is not a bf16
	scanBF16Typed int // scans given BF16 tensors
}

func newSpy() *spyBackend {
	return &spyBackend{Backend: cpu.New(0), pairs: map[[2]kernels.DType]int{}}
}

func (s *spyBackend) MatMul(out, a, b kernels.Tensor, transB bool) error {
	s.pairs[[2]kernels.DType{a.DType(), b.DType()}]++
	return s.Backend.MatMul(out, a, b, transB)
}

func (s *spyBackend) Convert(out, a kernels.Tensor) error {
	s.converts++
	return s.Backend.Convert(out, a)
}

func (s *spyBackend) inspectScan(x, B, C kernels.Tensor) {
	s.scans++
	for _, t := range []kernels.Tensor{x, B, C} {
		if t.DType() == kernels.BF16 {
			s.scanBF16Typed++
			continue
		}
		v, err := s.Download(t)
		if err != nil {
			s.scanNotBF16++
			return
		}
		for _, f := range v {
			if math.Float32bits(f)&0xffff != 0 {
				s.scanNotBF16++
				return
			}
		}
	}
}

func (s *spyBackend) SSDChunkScan(y, x, dt, A, B, C, D, state kernels.Tensor, chunk int) error {
	s.inspectScan(x, B, C)
	return s.Backend.SSDChunkScan(y, x, dt, A, B, C, D, state, chunk)
}

func (s *spyBackend) SSDRecurrence(y, x, dt, A, B, C, D, state kernels.Tensor) error {
	s.inspectScan(x, B, C)
	return s.Backend.SSDRecurrence(y, x, dt, A, B, C, D, state)
}

// In bf16 every product with a BF16 weight gets a BF16 activation and the
// scans get bf16 values (widened back on the CPU, whose scans take F32
// only); in f32 nothing is converted and the activations stay F32.
func TestPrecisionReachesEveryProduct(t *testing.T) {
	g := openGolden(t, "phi-h25")
	pixels, ids := g.f32("pixel_values"), g.ids("input_ids")
	for _, p := range []Precision{PrecisionF32, PrecisionBF16} {
		t.Run(string(p), func(t *testing.T) {
			be := newSpy()
			defer be.Close()
			m, err := Load(filepath.Join(fixtures, "phi-tiny-h25"), be, Options{Precision: p})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if m.mm.scanBF16 {
				t.Error("the CPU backend's scans were found to take bf16 inputs")
			}
			*be = spyBackend{Backend: be.Backend, pairs: map[[2]kernels.DType]int{}} // forget Load's probe
			if _, err := m.Forward(pixels, ids); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Prefill(pixels, ids[:len(ids)-1]); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Step(ids[len(ids)-1]); err != nil {
				t.Fatal(err)
			}
			mixed := be.pairs[[2]kernels.DType{kernels.F32, kernels.BF16}]
			both := be.pairs[[2]kernels.DType{kernels.BF16, kernels.BF16}]
			t.Logf("matmuls %v, converts %d, scans %d", be.pairs, be.converts, be.scans)
			if be.scans == 0 || be.scanBF16Typed != 0 {
				t.Fatalf("%d scans, %d given BF16 tensors; want > 0 and 0 on the CPU", be.scans, be.scanBF16Typed)
			}
			switch p {
			case PrecisionF32:
				if both != 0 || be.converts != 0 || mixed == 0 {
					t.Errorf("f32: %d bf16·bf16 products, %d conversions, %d f32·bf16 products; want 0, 0, > 0", both, be.converts, mixed)
				}
				if be.scanNotBF16 == 0 {
					t.Error("f32: every scan input was a bf16 value")
				}
			case PrecisionBF16:
				if mixed != 0 || both == 0 {
					t.Errorf("bf16: %d f32·bf16 products, %d bf16·bf16; want 0 and > 0", mixed, both)
				}
				if be.scanNotBF16 != 0 {
					t.Errorf("bf16: %d of %d scans got inputs that are not bf16 values", be.scanNotBF16, be.scans)
				}
			}
		})
	}
}

func TestPrecisionOptions(t *testing.T) {
	for in, want := range map[string]Precision{"": PrecisionF32, "f32": PrecisionF32, "bf16": PrecisionBF16} {
		if got, err := ParsePrecision(in); err != nil || got != want {
			t.Errorf("ParsePrecision(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"fp16", "BF16x", "f64"} {
		if _, err := ParsePrecision(bad); err == nil {
			t.Errorf("ParsePrecision(%q) accepted", bad)
		}
	}
	be := cpu.New(0)
	defer be.Close()
	dir := filepath.Join(fixtures, "phi-tiny")
	for _, o := range []Options{{Precision: "fp8"}, {Precision: PrecisionBF16, F32Weights: true}} {
		if m, err := Load(dir, be, o); err == nil {
			m.Close()
			t.Errorf("Load with %+v accepted", o)
		} else {
			t.Log(err)
		}
	}
	m, err := Load(dir, be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Precision() != PrecisionF32 {
		t.Errorf("default precision %q, want f32", m.Precision())
	}
}
