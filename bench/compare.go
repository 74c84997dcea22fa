package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"
)

// Result is one model's figures on one engine.
type Result struct {
	Label  string `json:"label"`            // how tables name it: "teacher", "h25", "transformers 5.17.0 …"
	Model  string `json:"model,omitempty"`  // checkpoint directory
	Engine string `json:"engine"`           // "matsurgery bf16", "transformers 5.17.0 generate (sdpa, bf16)"
	Device string `json:"device,omitempty"` // "cuda:0 (NVIDIA H200)"
	// Layers and MambaLayers describe a model this package measured (0 and
	// empty for figures read by ReadExternal).
	Layers      int   `json:"layers,omitempty"`
	MambaLayers []int `json:"mamba_layers"`
	// WeightsDeviceBytes is the device memory the loaded model held before
	// the first prompt (0 when not reported).
	WeightsDeviceBytes int64 `json:"weights_device_bytes,omitempty"`
	Rows               []Row `json:"rows"`
}

// row returns r's row for context n.
func (r *Result) row(n int) (Row, bool) {
	for _, x := range r.Rows {
		if x.Context == n {
			return x, true
		}
	}
	return Row{}, false
}

// Ratio compares one model with the baseline at one context.
type Ratio struct {
	Context int    `json:"context"`
	Label   string `json:"label"`
	// Prefill and Decode are the model's tokens/s over the baseline's (2 =
	// twice as fast).
	Prefill float64 `json:"prefill_speedup"`
	Decode  float64 `json:"decode_speedup"`
	// PeakDevice is the model's peak device memory over the baseline's
	// (0.75 = 25% less); 0 when either did not report it.
	PeakDevice float64 `json:"peak_device_ratio,omitempty"`
}

// Compare returns, for each result after the first and each context both
// measured, its ratios to the first (the baseline: the teacher on the
// same engine).
func Compare(results []Result) []Ratio {
	if len(results) < 2 {
		return nil
	}
	base := results[0]
	var out []Ratio
	for _, n := range contexts(results) {
		b, ok := base.row(n)
		if !ok {
			continue
		}
		for _, r := range results[1:] {
			x, ok := r.row(n)
			if !ok {
				continue
			}
			q := Ratio{Context: n, Label: r.Label, Prefill: x.PrefillTokPerS / b.PrefillTokPerS, Decode: x.DecodeTokPerS / b.DecodeTokPerS}
			if x.PeakDeviceBytes > 0 && b.PeakDeviceBytes > 0 {
				q.PeakDevice = float64(x.PeakDeviceBytes) / float64(b.PeakDeviceBytes)
			}
			out = append(out, q)
		}
	}
	return out
}

// contexts is the union of the results' contexts, ascending.
func contexts(results []Result) []int {
	var ns []int
	for _, r := range results {
		for _, x := range r.Rows {
			ns = append(ns, x.Context)
		}
	}
	slices.Sort(ns)
	return slices.Compact(ns)
}

// externalLine is one line of testdata/gen/bench_hf_generate.py.
type externalLine struct {
	Engine         string  `json:"engine"`
	Model          string  `json:"model"`
	Context        int     `json:"context"`
	PrefillTokPerS float64 `json:"prefill_tokens_per_s"`
	DecodeTokPerS  float64 `json:"decode_tokens_per_s"`
	PrefillSeconds float64 `json:"prefill_seconds"`
	DecodeTokens   int     `json:"decode_tokens"`
	Repeats        int     `json:"repeats"`
	PeakDevice     int64   `json:"peak_device_bytes"`
}

// ReadExternal reads figures another engine measured, one JSON object a
// line as testdata/gen/bench_hf_generate.py prints them ("engine",
// "context", "prefill_tokens_per_s", "decode_tokens_per_s",
// "prefill_seconds", "peak_device_bytes"; "model", "decode_tokens" and
// "repeats" optional). Lines of one engine make one Result, labelled by
// the engine; blank lines and lines not starting with '{' (logs) are
// skipped. name names the input in errors.
func ReadExternal(r io.Reader, name string) ([]Result, error) {
	var out []Result
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for ln := 1; s.Scan(); ln++ {
		text := s.Bytes()
		if len(text) == 0 || text[0] != '{' {
			continue
		}
		var e externalLine
		if err := json.Unmarshal(text, &e); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, ln, err)
		}
		switch {
		case e.Engine == "":
			return nil, fmt.Errorf("%s:%d: no engine", name, ln)
		case e.Context <= 0:
			return nil, fmt.Errorf("%s:%d: context %d", name, ln, e.Context)
		case !(e.PrefillTokPerS > 0) || !(e.DecodeTokPerS > 0) || math.IsInf(e.PrefillTokPerS, 0) || math.IsInf(e.DecodeTokPerS, 0):
			return nil, fmt.Errorf("%s:%d: tokens/s %g (prefill) and %g (decode) must be positive and finite", name, ln, e.PrefillTokPerS, e.DecodeTokPerS)
		}
		row := Row{Context: e.Context, PrefillSeconds: e.PrefillSeconds, PrefillTokPerS: e.PrefillTokPerS,
			DecodeTokens: e.DecodeTokens, DecodeTokPerS: e.DecodeTokPerS, Repeats: e.Repeats, PeakDeviceBytes: e.PeakDevice}
		if e.DecodeTokens > 0 {
			row.DecodeSeconds = float64(e.DecodeTokens) / e.DecodeTokPerS
		}
		i := slices.IndexFunc(out, func(r Result) bool { return r.Engine == e.Engine })
		if i < 0 {
			out = append(out, Result{Label: e.Engine, Engine: e.Engine, Model: e.Model, MambaLayers: []int{}})
			i = len(out) - 1
		}
		if _, dup := out[i].row(e.Context); dup {
			return nil, fmt.Errorf("%s:%d: context %d of %s given twice", name, ln, e.Context, e.Engine)
		}
		out[i].Rows = append(out[i].Rows, row)
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no figures (want JSON lines of bench_hf_generate.py)", name)
	}
	return out, nil
}

// WriteTable prints one table of every result, grouped by context: tokens/s
// of prefill and decode and peak memory (the device's, else the process's
// peak RSS, marked "host"), then, with more than one result, each one's
// ratios to the first (speed-up of prefill and of decode, change of peak
// device memory), then the model.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	cmp := len(results) > 1
	head := "context\tprefill tok/s\tdecode tok/s\tpeak memory"
	if cmp {
		head += "\tprefill ×\tdecode ×\tmemory"
	}
	fmt.Fprintln(tw, head+"\tmodel")
	for _, n := range contexts(results) {
		base, hasBase := results[0].row(n)
		for _, r := range results {
			x, ok := r.row(n)
			if !ok {
				continue
			}
			line := fmt.Sprintf("%d\t%s\t%s\t%s", n, num(x.PrefillTokPerS), num(x.DecodeTokPerS), x.PeakMemory())
			if cmp {
				if hasBase {
					line += fmt.Sprintf("\t%.2f\t%.2f\t%s", x.PrefillTokPerS/base.PrefillTokPerS, x.DecodeTokPerS/base.DecodeTokPerS,
						change(x.PeakDeviceBytes, base.PeakDeviceBytes))
				} else {
					line += "\t-\t-\t-"
				}
			}
			fmt.Fprintln(tw, line+"\t"+r.describe())
		}
	}
	return tw.Flush()
}

// describe names a result in a table: its label, and how many of its
// layers are Mamba layers when known.
func (r *Result) describe() string {
	if r.Layers > 0 {
		return fmt.Sprintf("%s (%d/%d Mamba)", r.Label, len(r.MambaLayers), r.Layers)
	}
	return r.Label
}

// num prints tokens/s with three or more significant digits.
func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// PeakMemory prints the row's peak device memory, else the process's peak
// RSS marked "host", else "-".
func (x Row) PeakMemory() string {
	if x.PeakDeviceBytes > 0 {
		return HumanBytes(x.PeakDeviceBytes)
	}
	if x.PeakHostBytes > 0 {
		return HumanBytes(x.PeakHostBytes) + " host"
	}
	return "-"
}

// change prints a/b − 1 as a signed percentage ("-" when either is 0).
func change(a, b int64) string {
	if a <= 0 || b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%+.1f%%", 100*(float64(a)/float64(b)-1))
}

// HumanBytes prints n bytes in binary units (KiB, MiB, GiB).
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, suffix := float64(n)/unit, "KiB"
	for _, s := range []string{"MiB", "GiB", "TiB"} {
		if v < unit {
			break
		}
		v, suffix = v/unit, s
	}
	return fmt.Sprintf("%.2f %s", v, suffix)
}
