package trainlog

import (
	"errors"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// syntheticRun makes n records shaped like a distillation run: a WSD
// learning rate, KL and layer-L2 losses decaying over two orders of
// magnitude with noise, CE unused (0), a falling gradient norm.
func syntheticRun(rng *rand.Rand, n int) []Record {
	recs := make([]Record, n)
	for i := range recs {
		step := i + 1
		frac := float64(step) / float64(n)
		noise := func() float64 { return math.Exp(0.25 * rng.NormFloat64()) }
		kl := (0.25 + 6*math.Exp(-8*frac)) * noise()
		l2 := (12 + 450*math.Exp(-10*frac)) * noise()
		lr := 2e-4
		switch {
		case step < n/10:
			lr = 2e-4 * float64(step) / float64(n/10)
		case step > n*9/10:
			lr = 2e-4 * 0.5 * (1 + math.Cos(math.Pi*float64(step-n*9/10)/float64(n/10)))
		}
		recs[i] = Record{
			Step:         step,
			Epoch:        frac,
			Losses:       Losses{KL: kl, L2: l2, Total: kl + l2},
			LR:           lr,
			GradNorm:     (0.4 + 30*math.Exp(-6*frac)) * noise(),
			TokensPerSec: 1800 + 50*rng.NormFloat64(),
			Elapsed:      time.Duration(step) * 1337 * time.Millisecond,
		}
	}
	return recs
}

func writeAll(t *testing.T, w *Writer, recs []Record) {
	t.Helper()
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRoundTrip: records written and read back are identical, NaN and
// infinite values included; every line ends with a newline.
func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	recs := syntheticRun(rng, 40)
	recs[7].Losses.KL = math.NaN()
	recs[8].GradNorm = math.Inf(1)
	recs[9].Losses.L2 = math.Inf(-1)
	recs[10].Elapsed = 123456789 * time.Nanosecond
	recs[11].LR = 1e-300
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, recs)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(recs) {
		t.Fatalf("read %d records, wrote %d", len(got), len(recs))
	}
	for i := range recs {
		if !sameRecord(got[i], recs[i]) {
			t.Errorf("record %d: read %+v, wrote %+v", i, got[i], recs[i])
		}
	}
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != len(recs) {
		t.Errorf("%d lines for %d records", len(lines), len(recs))
	}
	if !strings.Contains(lines[7], `"kl":"NaN"`) || !strings.Contains(lines[8], `"grad_norm":"Infinity"`) {
		t.Errorf("non-finite values written as %s / %s", lines[7], lines[8])
	}
	for _, key := range []string{`"step":1,`, `"epoch":`, `"losses":{"kl":`, `"l2":`, `"ce":0,`, `"total":`, `"lr":`, `"grad_norm":`, `"tokens_per_s":`, `"elapsed_s":1.337}`} {
		if !strings.Contains(lines[0], key) {
			t.Errorf("first line %s lacks %s", lines[0], key)
		}
	}
}

// sameRecord compares bit for bit, NaN equal to NaN.
func sameRecord(a, b Record) bool {
	fs := func(r Record) []float64 {
		return []float64{r.Epoch, r.Losses.KL, r.Losses.L2, r.Losses.CE, r.Losses.Total, r.LR, r.GradNorm, r.TokensPerSec}
	}
	x, y := fs(a), fs(b)
	for i := range x {
		if math.Float64bits(x[i]) != math.Float64bits(y[i]) && !(math.IsNaN(x[i]) && math.IsNaN(y[i])) {
			return false
		}
	}
	return a.Step == b.Step && a.Elapsed == b.Elapsed
}

// TestResumeTruncates: a run logs 30 steps and is killed mid-line; it
// resumes from its checkpoint at step 20 and logs 21–30 again. The file
// must be byte-identical to an uninterrupted run's.
func TestResumeTruncates(t *testing.T) {
	dir := t.TempDir()
	recs := syntheticRun(rand.New(rand.NewPCG(3, 4)), 30)

	whole := filepath.Join(dir, "whole.jsonl")
	w, err := Create(whole)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, recs)
	w.Close()

	path := filepath.Join(dir, "metrics.jsonl")
	w, err = Create(path)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, recs)
	w.Close()
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"step":31,"epoch":0.9,"loss`) // killed mid-line
	f.Close()

	w, err = Resume(path, 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(recs[5]); err == nil || !strings.Contains(err.Error(), "step 6 after step 20") {
		t.Errorf("writing an old step: %v", err)
	}
	writeAll(t, w, recs[20:])
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	want, _ := os.ReadFile(whole)
	if string(got) != string(want) {
		t.Errorf("resumed log differs from the uninterrupted one:\n%s\nwant\n%s", got, want)
	}

	// Resuming at the last step, or past it, keeps everything; at 0, nothing.
	for _, c := range []struct{ step, n int }{{30, 30}, {99, 30}, {0, 0}} {
		w, err := Resume(path, c.step)
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		if recs, _ := Read(path); len(recs) != c.n {
			t.Errorf("resume at %d keeps %d records, want %d", c.step, len(recs), c.n)
		}
	}
}

func TestResumeErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Resume(filepath.Join(dir, "missing.jsonl"), 3); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing log: %v", err)
	}
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, []byte("{\"step\":1}\nnot json\n{\"step\":3}\n"), 0o644)
	if _, err := Resume(bad, 3); err == nil || !strings.Contains(err.Error(), "bad.jsonl line 2") {
		t.Errorf("corrupt line: %v", err)
	}
	if _, err := Read(bad); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("Read of a corrupt line: %v", err)
	}
	order := filepath.Join(dir, "order.jsonl")
	os.WriteFile(order, []byte("{\"step\":1}\n{\"step\":5}\n{\"step\":4}\n"), 0o644)
	if _, err := Resume(order, 9); err == nil || !strings.Contains(err.Error(), "line 3: step 4 after step 5") {
		t.Errorf("decreasing steps: %v", err)
	}
	nostep := filepath.Join(dir, "nostep.jsonl")
	os.WriteFile(nostep, []byte("{\"lr\":1}\n"), 0o644)
	if _, err := Read(nostep); err == nil || !strings.Contains(err.Error(), "no step") {
		t.Errorf("record without a step: %v", err)
	}
	// A file cut mid-line reads as the complete lines before the cut.
	torn := filepath.Join(dir, "torn.jsonl")
	os.WriteFile(torn, []byte("{\"step\":1}\n{\"step\":2,\"lo"), 0o644)
	if recs, err := Read(torn); err != nil || len(recs) != 1 {
		t.Errorf("torn log: %d records, %v", len(recs), err)
	}
}
