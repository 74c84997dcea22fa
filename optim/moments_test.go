package optim

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// An optimiser whose state is copied out with State and into a fresh one
// with SetState continues exactly as the original: the same parameters
// after two more updates, bit for bit; and the copies are not shared.
func TestStateRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	draw := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	mk := func() []Param {
		return []Param{{Name: "w", Data: draw(37), Grad: make([]float32, 37), Decay: true}, {Name: "b", Data: draw(5), Grad: make([]float32, 5)}}
	}
	a := mk()
	for range 3 {
		for _, p := range a {
			copy(p.Grad, draw(len(p.Grad)))
		}
		if err := Recipe().Step(a, 1e-3); err != nil { // a fresh optimiser: moments from zero
			t.Fatal(err)
		}
	}
	opt := Recipe()
	for range 3 {
		for _, p := range a {
			copy(p.Grad, draw(len(p.Grad)))
		}
		if err := opt.Step(a, 1e-3); err != nil {
			t.Fatal(err)
		}
	}
	steps, ms := opt.State()
	if steps != 3 || len(ms) != 2 || ms[0].Name != "w" || !ms[0].Decay || ms[1].Decay || len(ms[1].V) != 5 {
		t.Fatalf("State: %d steps, %+v", steps, ms)
	}
	_, other := opt.State()
	other[0].M[0] = 1e9 // a copy: the optimiser must not see it
	saved := make([]Param, len(a))
	for i, p := range a {
		saved[i] = Param{Name: p.Name, Data: slices.Clone(p.Data), Grad: make([]float32, len(p.Grad)), Decay: p.Decay}
	}
	twin := Recipe()
	if err := twin.SetState(steps, ms); err != nil {
		t.Fatal(err)
	}
	ms[1].V[0] = 1e9 // SetState copied
	for range 2 {
		g := [][]float32{draw(37), draw(5)}
		for i := range a {
			copy(a[i].Grad, g[i])
			copy(saved[i].Grad, g[i])
		}
		if err := opt.Step(a, 1e-3); err != nil {
			t.Fatal(err)
		}
		if err := twin.Step(saved, 1e-3); err != nil {
			t.Fatal(err)
		}
	}
	for i := range a {
		if !slices.Equal(a[i].Data, saved[i].Data) {
			t.Errorf("parameter %s differs after the restored state's updates", a[i].Name)
		}
	}
	if twin.Steps() != 5 {
		t.Errorf("restored optimiser at %d updates, want 5", twin.Steps())
	}
	for _, bad := range [][]Moments{
		{{Name: "", M: []float32{1}, V: []float32{1}}},
		{{Name: "a", M: []float32{1}, V: []float32{1}}, {Name: "a", M: []float32{1}, V: []float32{1}}},
		{{Name: "a", M: []float32{1, 2}, V: []float32{1}}},
	} {
		if err := twin.SetState(1, bad); err == nil {
			t.Errorf("SetState(%+v) accepted", bad)
		}
	}
	if err := twin.SetState(-1, nil); err == nil {
		t.Error("SetState with -1 updates accepted")
	}
	if twin.Steps() != 5 {
		t.Error("a refused SetState changed the state")
	}
}
