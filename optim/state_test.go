package optim

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// trainSteps runs n updates, drawing gradients from rng before each.
func trainSteps(t *testing.T, opt *AdamW, ps []Param, rng *rand.Rand, n int) {
	t.Helper()
	for range n {
		fillGrads(rng, ps)
		if err := opt.Step(ps, 1e-3*float64(1+opt.Steps()%3)); err != nil {
			t.Fatal(err)
		}
	}
}

func cloneParams(ps []Param) []Param {
	out := make([]Param, len(ps))
	for k, p := range ps {
		out[k] = Param{Name: p.Name, Data: append([]float32(nil), p.Data...), Grad: append([]float32(nil), p.Grad...), Decay: p.Decay}
	}
	return out
}

// TestSaveLoadResumeBitExact: run 3 updates, save, then 4 more. A fresh
// optimiser loaded from the saved bytes, given the same weights and
// gradients, must produce bit-identical weights and moments.
func TestSaveLoadResumeBitExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	ps := randomParams(rng, chunkLen+9, 33, 2)
	opt := &AdamW{LR: 5e-3, Beta1: 0.8, Beta2: 0.99, Eps: 1e-7, WeightDecay: 0.02, Workers: 2}
	trainSteps(t, opt, ps, rng, 3)

	saved, err := opt.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	resumed := cloneParams(ps)
	seed := rng.Uint64()

	trainSteps(t, opt, ps, rand.New(rand.NewPCG(seed, 1)), 4)

	var back AdamW
	back.Workers = 1
	if err := back.UnmarshalBinary(saved); err != nil {
		t.Fatal(err)
	}
	if back.LR != 5e-3 || back.Beta1 != 0.8 || back.Beta2 != 0.99 || back.Eps != 1e-7 || back.WeightDecay != 0.02 || back.Steps() != 3 || back.Workers != 1 {
		t.Errorf("loaded hyperparameters %+v, steps %d", back, back.Steps())
	}
	trainSteps(t, &back, resumed, rand.New(rand.NewPCG(seed, 1)), 4)
	for k := range ps {
		if !sameBits(ps[k].Data, resumed[k].Data) || !sameBits(opt.state[k].m, back.state[k].m) || !sameBits(opt.state[k].v, back.state[k].v) {
			t.Errorf("parameter %s: resumed run differs from the uninterrupted one", ps[k].Name)
		}
	}

	// The file form, atomically written, round-trips too.
	path := filepath.Join(t.TempDir(), "adamw.state")
	if err := opt.SaveFile(path); err != nil {
		t.Fatal(err)
	}
	var fromFile AdamW
	if err := fromFile.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	again, _ := fromFile.MarshalBinary()
	want, _ := opt.MarshalBinary()
	if !bytes.Equal(again, want) {
		t.Error("state read from the file saves differently")
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("directory holds %d entries after SaveFile, want 1", len(entries))
	}
}

// TestSaveBeforeFirstStep: a fresh optimiser saves its hyperparameters
// only, and the loaded one creates its moments on its first Step.
func TestSaveBeforeFirstStep(t *testing.T) {
	b, err := Recipe().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var o AdamW
	if err := o.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if o.LR != 2e-4 || o.Beta2 != 0.95 || o.state != nil {
		t.Errorf("loaded %+v", o)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	if err := o.Step(randomParams(rng, 4), 1e-3); err != nil {
		t.Fatal(err)
	}
}

func TestLoadRejectsDamage(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	ps := randomParams(rng, 1000, 10)
	opt := Recipe()
	trainSteps(t, opt, ps, rng, 2)
	good, err := opt.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	headerLen := len(stateMagic) + 4 + 5*8 + 8 + 4 + (4 + 1 + 1 + 8) + (4 + 2 + 1 + 8)
	damage := map[string]func([]byte) []byte{
		"magic":              func(b []byte) []byte { b[0] = 'X'; return b },
		"version 2":          func(b []byte) []byte { b[8] = 2; return b },
		"header checksum":    func(b []byte) []byte { b[20] ^= 1; return b },          // inside Beta1
		"element count":      func(b []byte) []byte { b[headerLen-8] ^= 1; return b }, // px: 10 → 11 elements
		"data checksum":      func(b []byte) []byte { b[headerLen+4+100] ^= 0x40; return b },
		"truncated":          func(b []byte) []byte { return b[:len(b)-5] },
		"truncated at 30":    func(b []byte) []byte { return b[:30] },
		"after the end":      func(b []byte) []byte { return append(b, 0) },
		"data checksum tail": func(b []byte) []byte { b[len(b)-1] ^= 1; return b },
	}
	for name, f := range damage {
		var o AdamW
		err := o.UnmarshalBinary(f(bytes.Clone(good)))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if name != "version 2" && !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s: error %v does not wrap ErrCorruptState", name, err)
		}
		want := strings.TrimSuffix(strings.TrimSuffix(name, " tail"), " at 30")
		if name == "element count" {
			want = "header checksum" // sizes are checked before they are trusted
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %q does not say so", name, err)
		}
		if o.state != nil || o.Steps() != 0 {
			t.Errorf("%s: the optimiser changed", name)
		}
	}

	// Loading into an optimiser keeps its state when the bytes are bad.
	before, _ := opt.MarshalBinary()
	bad := bytes.Clone(good)
	bad[len(bad)-10] ^= 1
	if err := opt.UnmarshalBinary(bad); err == nil {
		t.Fatal("damaged state accepted")
	}
	if after, _ := opt.MarshalBinary(); !bytes.Equal(before, after) {
		t.Error("a failed load changed the optimiser")
	}
	if err := opt.LoadFile(filepath.Join(t.TempDir(), "missing")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
