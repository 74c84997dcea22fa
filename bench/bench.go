// Package bench measures a loaded model's inference speed: prefill and
// decode tokens per second and peak memory at several context lengths. It
// puts several models measured the same way side by side (Result, Compare,
// WriteTable): a teacher and its hybrids on one engine, and figures another
// engine measured on the same prompts (ReadExternal: the JSON lines of
// testdata/gen/bench_hf_generate.py).
package bench

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/model"
)

// Options of a benchmark.
type Options struct {
	// Contexts are the prompt lengths in tokens. Run measures them in
	// ascending order (duplicates dropped), so that the peak memory after
	// each one is that context's peak: a model's buffers grow with the
	// context and those of a shorter one are freed first.
	Contexts     []int
	DecodeTokens int // tokens decoded after each prefill (default 32)
	Vocab        int // token ids are drawn from [0, Vocab)
	Seed         uint64
	// Repeats is how many times each context is measured (default 1);
	// the median prefill and the median decode time are reported.
	Repeats int
	// RepeatBudget, when positive, stops repeating a context once its
	// measurements have taken this long (the first one always runs).
	RepeatBudget time.Duration
	// Progress, when not nil, is called with each context's row as soon as
	// it is measured.
	Progress func(Row)
}

// Row is one context length's figures.
type Row struct {
	Context         int     `json:"context"`
	PrefillSeconds  float64 `json:"prefill_seconds"`
	PrefillTokPerS  float64 `json:"prefill_tokens_per_s"`
	DecodeTokens    int     `json:"decode_tokens"`
	DecodeSeconds   float64 `json:"decode_seconds"`
	DecodeTokPerS   float64 `json:"decode_tokens_per_s"`
	Repeats         int     `json:"repeats,omitempty"`           // measurements behind the medians
	PeakHostBytes   int64   `json:"peak_host_bytes,omitempty"`   // process peak RSS so far
	PeakDeviceBytes int64   `json:"peak_device_bytes,omitempty"` // when the backend reports it
}

// Run measures each context in turn: a prefill of random token ids, then
// greedy decode steps. A prefill of the shortest context (at most 1024
// tokens, so that long-sequence code paths are reached) and two decode
// steps come first as a warm-up (kernels compiled, library heuristics and
// buffers made).
func Run(m *model.Model, o Options) ([]Row, error) {
	if o.DecodeTokens <= 0 {
		o.DecodeTokens = 32
	}
	if o.Repeats <= 0 {
		o.Repeats = 1
	}
	if o.Vocab <= 0 {
		return nil, fmt.Errorf("bench: vocabulary size %d", o.Vocab)
	}
	contexts := slices.Clone(o.Contexts)
	slices.Sort(contexts)
	contexts = slices.Compact(contexts)
	if len(contexts) == 0 {
		return nil, fmt.Errorf("bench: no context lengths")
	}
	for _, n := range contexts {
		if n <= 0 {
			return nil, fmt.Errorf("bench: context %d", n)
		}
	}
	r := rand.New(rand.NewPCG(o.Seed, 17))
	ids := func(n int) []int {
		v := make([]int, n)
		for i := range v {
			v[i] = r.IntN(o.Vocab)
		}
		return v
	}
	be := m.Backend()
	warm, err := m.Prefill(nil, ids(min(contexts[0], 1024)))
	if err != nil {
		return nil, fmt.Errorf("bench: warm-up prefill: %w", err)
	}
	for range 2 {
		if warm, err = m.Step(argmax(warm)); err != nil {
			return nil, fmt.Errorf("bench: warm-up decode: %w", err)
		}
	}
	var rows []Row
	for _, n := range contexts {
		prompt := ids(n)
		var pre, dec []float64
		spent := 0.0
		for len(pre) < o.Repeats && (len(pre) == 0 || o.RepeatBudget <= 0 || spent < o.RepeatBudget.Seconds()) {
			p, d, err := measure(m, be, prompt, o.DecodeTokens)
			if err != nil {
				return nil, err
			}
			pre, dec = append(pre, p), append(dec, d)
			spent += p + d
		}
		p, d := median(pre), median(dec)
		row := Row{Context: n, PrefillSeconds: p, PrefillTokPerS: float64(n) / p, DecodeTokens: o.DecodeTokens,
			DecodeSeconds: d, DecodeTokPerS: float64(o.DecodeTokens) / d, Repeats: len(pre), PeakHostBytes: PeakRSS()}
		if mr, ok := be.(kernels.MemoryReporter); ok {
			_, row.PeakDeviceBytes = mr.DeviceMemory()
		}
		rows = append(rows, row)
		if o.Progress != nil {
			o.Progress(row)
		}
	}
	return rows, nil
}

// measure times one prefill of prompt (until its last logits are on the
// host) and decode greedy steps after it, in seconds.
func measure(m *model.Model, be kernels.Backend, prompt []int, decode int) (prefill, steps float64, err error) {
	if err := be.Sync(); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	logits, err := m.Prefill(nil, prompt)
	if err != nil {
		return 0, 0, fmt.Errorf("bench: prefill of %d tokens: %w", len(prompt), err)
	}
	prefill = time.Since(t0).Seconds()
	t1 := time.Now()
	for i := range decode {
		if logits, err = m.Step(argmax(logits)); err != nil {
			return 0, 0, fmt.Errorf("bench: decode step %d after %d tokens: %w", i, len(prompt), err)
		}
	}
	if err := be.Sync(); err != nil {
		return 0, 0, err
	}
	return prefill, time.Since(t1).Seconds(), nil
}

// median of a non-empty slice (the mean of the middle two when even).
func median(v []float64) float64 {
	s := slices.Clone(v)
	sort.Float64s(s)
	h := len(s) / 2
	if len(s)%2 == 1 {
		return s[h]
	}
	return (s[h-1] + s[h]) / 2
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// PeakRSS is the process's peak resident set size (Linux VmHWM), or 0.
func PeakRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			fields := strings.Fields(rest)
			if len(fields) > 0 {
				kb, _ := strconv.ParseInt(fields[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}
