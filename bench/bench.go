// Package bench measures a loaded model's inference speed: prefill and
// decode tokens per second and peak memory at several context lengths.
package bench

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/model"
)

// Options of a benchmark.
type Options struct {
	Contexts     []int // prompt lengths in tokens
	DecodeTokens int   // tokens decoded after each prefill (default 32)
	Vocab        int   // token ids are drawn from [0, Vocab)
	Seed         uint64
}

// Row is one context length's figures.
type Row struct {
	Context         int     `json:"context"`
	PrefillSeconds  float64 `json:"prefill_seconds"`
	PrefillTokPerS  float64 `json:"prefill_tokens_per_s"`
	DecodeTokens    int     `json:"decode_tokens"`
	DecodeSeconds   float64 `json:"decode_seconds"`
	DecodeTokPerS   float64 `json:"decode_tokens_per_s"`
	PeakHostBytes   int64   `json:"peak_host_bytes"`             // process peak RSS so far
	PeakDeviceBytes int64   `json:"peak_device_bytes,omitempty"` // when the backend reports it
}

// Run measures each context in turn: a prefill of random token ids, then
// greedy decode steps. The first context is preceded by a short warm-up.
func Run(m *model.Model, o Options) ([]Row, error) {
	if o.DecodeTokens <= 0 {
		o.DecodeTokens = 32
	}
	if o.Vocab <= 0 {
		return nil, fmt.Errorf("bench: vocabulary size %d", o.Vocab)
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
	if _, err := m.Prefill(nil, ids(8)); err != nil { // warm-up: kernels compiled, buffers made
		return nil, err
	}
	var rows []Row
	for _, n := range o.Contexts {
		if n <= 0 {
			return nil, fmt.Errorf("bench: context %d", n)
		}
		prompt := ids(n)
		if err := be.Sync(); err != nil {
			return nil, err
		}
		t0 := time.Now()
		logits, err := m.Prefill(nil, prompt)
		if err != nil {
			return nil, fmt.Errorf("bench: prefill of %d tokens: %w", n, err)
		}
		pre := time.Since(t0).Seconds()
		t1 := time.Now()
		for i := 0; i < o.DecodeTokens; i++ {
			if logits, err = m.Step(argmax(logits)); err != nil {
				return nil, fmt.Errorf("bench: decode step %d after %d tokens: %w", i, n, err)
			}
		}
		if err := be.Sync(); err != nil {
			return nil, err
		}
		dec := time.Since(t1).Seconds()
		row := Row{Context: n, PrefillSeconds: pre, PrefillTokPerS: float64(n) / pre, DecodeTokens: o.DecodeTokens,
			DecodeSeconds: dec, DecodeTokPerS: float64(o.DecodeTokens) / dec, PeakHostBytes: PeakRSS()}
		if mr, ok := be.(kernels.MemoryReporter); ok {
			_, row.PeakDeviceBytes = mr.DeviceMemory()
		}
		rows = append(rows, row)
	}
	return rows, nil
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
