package model

import (
	"encoding/binary"
	"math"
	"path/filepath"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/cpu"
)

const (
	fixtures   = "../testdata/fixtures"
	goldenDir  = "../testdata/golden/model"
	goldenTol  = 1e-4 // float32 forward vs the float64 PyTorch forward, relative
	decodeTol  = 1e-5 // incremental decode vs recomputing the whole sequence
	familyPhi  = "phi"
	familyQwen = "qwen2"
)

// plainBackend hides the optional extensions of the backend it wraps: the
// model takes its fallback paths.
type plainBackend struct{ kernels.Backend }

// golden is one golden file of float64 tensors.
type golden struct {
	t  *testing.T
	ck *formats.Checkpoint
}

func openGolden(t *testing.T, name string) *golden {
	t.Helper()
	ck, err := formats.Open(filepath.Join(goldenDir, name+".safetensors"))
	if err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	t.Cleanup(func() { ck.Close() })
	return &golden{t: t, ck: ck}
}

// f64 returns an F64 tensor's values.
func (g *golden) f64(name string) []float64 {
	g.t.Helper()
	ti, ok := g.ck.Tensor(name)
	if !ok || ti.DType != formats.F64 {
		g.t.Fatalf("golden tensor %s: missing or not F64", name)
	}
	raw, err := g.ck.Raw(name)
	if err != nil {
		g.t.Fatalf("golden tensor %s: %v", name, err)
	}
	out := make([]float64, len(raw)/8)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
	}
	return out
}

// f32 returns an F64 tensor rounded to float32 (model inputs).
func (g *golden) f32(name string) []float32 {
	v := g.f64(name)
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

// ids returns an I64 tensor as ints.
func (g *golden) ids(name string) []int {
	g.t.Helper()
	raw, err := g.ck.Raw(name)
	if err != nil {
		g.t.Fatalf("golden tensor %s: %v", name, err)
	}
	out := make([]int, len(raw)/8)
	for i := range out {
		out[i] = int(int64(binary.LittleEndian.Uint64(raw[8*i:])))
	}
	return out
}

// relErr is ‖got−want‖/‖want‖ over all elements; NaN or Inf gives +Inf.
func relErr(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i, w := range want {
		g := float64(got[i])
		if math.IsNaN(g) || math.IsInf(g, 0) {
			return math.Inf(1)
		}
		num += (g - w) * (g - w)
		den += w * w
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func widen(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// checkRel fails when got is further than tol from want.
func checkRel(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", what, len(got), len(want))
		return
	}
	e := relErr(got, want)
	if !(e <= tol) {
		t.Errorf("%s: relative error %.3g > %.3g", what, e, tol)
		return
	}
	t.Logf("%s: relative error %.3g", what, e)
}

// download syncs and copies t to the host.
func download(t *testing.T, be kernels.Backend, x kernels.Tensor) []float32 {
	t.Helper()
	if err := be.Sync(); err != nil {
		t.Fatal(err)
	}
	v, err := be.Download(x)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// load loads a fixture on a fresh CPU backend (wrapped by wrap when not nil).
func load(t testing.TB, dir string, opts Options, plain bool) *Model {
	t.Helper()
	var be kernels.Backend = cpu.New(0)
	if plain {
		be = plainBackend{be}
	}
	m, err := Load(filepath.Join(fixtures, dir), be, opts)
	if err != nil {
		t.Fatalf("load %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		be.Close()
	})
	return m
}
