package bench

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/model"
)

func loadFixture(t *testing.T, dir string, opts model.Options) *model.Model {
	t.Helper()
	be := cpu.New(0)
	t.Cleanup(func() { be.Close() })
	m, err := model.Load("../testdata/fixtures/"+dir, be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestRunReportsEveryContext(t *testing.T) {
	for _, prec := range []model.Precision{model.PrecisionF32, model.PrecisionBF16} {
		t.Run(string(prec), func(t *testing.T) {
			m := loadFixture(t, "phi-tiny-h25", model.Options{Precision: prec})
			// Out of order and repeated: measured once each, ascending.
			rows, err := Run(m, Options{Contexts: []int{40, 16, 40}, DecodeTokens: 5, Vocab: 1024, Repeats: 3})
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 2 || rows[0].Context != 16 || rows[1].Context != 40 {
				t.Fatalf("rows %+v", rows)
			}
			for _, r := range rows {
				if !(r.PrefillTokPerS > 0) || !(r.DecodeTokPerS > 0) || r.DecodeTokens != 5 || r.PeakHostBytes <= 0 || r.Repeats != 3 {
					t.Errorf("row %+v", r)
				}
				if d := r.PrefillTokPerS*r.PrefillSeconds - float64(r.Context); math.Abs(d) > 1e-6*float64(r.Context) {
					t.Errorf("prefill tokens/s × seconds = %g tokens, want %d", r.PrefillTokPerS*r.PrefillSeconds, r.Context)
				}
			}
		})
	}
	m := loadFixture(t, "phi-tiny", model.Options{})
	for _, o := range []Options{{Contexts: []int{0}, Vocab: 1024}, {Contexts: []int{8}, Vocab: 0}, {Contexts: []int{-3, 8}, Vocab: 1024}} {
		if _, err := Run(m, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// A budget shorter than one measurement stops the repeats after the first.
func TestRepeatBudget(t *testing.T) {
	m := loadFixture(t, "phi-tiny", model.Options{})
	rows, err := Run(m, Options{Contexts: []int{32}, DecodeTokens: 2, Vocab: 1024, Repeats: 5, RepeatBudget: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if rows[0].Repeats != 1 {
		t.Errorf("%d repeats within a 1 ns budget, want 1", rows[0].Repeats)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{5, 1, 4}, 4}, {[]float64{4, 1, 2, 8}, 3}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %g, want %g", c.in, got, c.want)
		}
	}
}

func TestAttentionTimesEveryContext(t *testing.T) {
	m := loadFixture(t, "phi-tiny-h25", model.Options{})
	rows, err := Attention(m, []int{64, 16}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Context != 16 || rows[1].Context != 64 {
		t.Fatalf("rows %+v", rows)
	}
	for _, r := range rows {
		if !(r.Seconds > 0) || r.Layers != 6 { // 8 layers, 2 of them Mamba
			t.Errorf("row %+v", r)
		}
	}
	if _, err := Attention(m, []int{0}, 1); err == nil {
		t.Error("context 0 accepted")
	}
}

func result(label string, layers int, rows ...Row) Result {
	return Result{Label: label, Layers: layers, MambaLayers: []int{}, Rows: rows}
}

func TestCompareAndTable(t *testing.T) {
	teacher := result("teacher", 32,
		Row{Context: 1024, PrefillTokPerS: 1000, DecodeTokPerS: 50, PeakDeviceBytes: 8 << 30},
		Row{Context: 4096, PrefillTokPerS: 800, DecodeTokPerS: 40, PeakDeviceBytes: 10 << 30})
	hybrid := result("h25", 32,
		Row{Context: 4096, PrefillTokPerS: 1200, DecodeTokPerS: 60, PeakDeviceBytes: 15 << 29},
		Row{Context: 16384, PrefillTokPerS: 900, DecodeTokPerS: 30})
	hybrid.MambaLayers = []int{0, 4, 8, 12, 16, 20, 24, 28}
	ratios := Compare([]Result{teacher, hybrid})
	if len(ratios) != 1 {
		t.Fatalf("ratios %+v, want the one context both measured", ratios)
	}
	if r := ratios[0]; r.Context != 4096 || r.Label != "h25" || r.Prefill != 1.5 || r.Decode != 1.5 || r.PeakDevice != 0.75 {
		t.Errorf("ratio %+v", r)
	}
	if Compare([]Result{teacher}) != nil {
		t.Error("ratios of a single result")
	}

	var buf bytes.Buffer
	if err := WriteTable(&buf, []Result{teacher, hybrid}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := [][]string{
		{"context", "prefill", "tok/s", "decode", "tok/s", "peak", "memory", "prefill", "×", "decode", "×", "memory", "model"},
		{"1024", "1000", "50.0", "8.00", "GiB", "1.00", "1.00", "+0.0%", "teacher", "(0/32", "Mamba)"},
		{"4096", "800", "40.0", "10.00", "GiB", "1.00", "1.00", "+0.0%", "teacher", "(0/32", "Mamba)"},
		{"4096", "1200", "60.0", "7.50", "GiB", "1.50", "1.50", "-25.0%", "h25", "(8/32", "Mamba)"},
		{"16384", "900", "30.0", "-", "-", "-", "-", "h25", "(8/32", "Mamba)"},
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", buf.String())
	}
	for i, w := range want {
		if got := strings.Fields(lines[i]); strings.Join(got, " ") != strings.Join(w, " ") {
			t.Errorf("line %d: %q, want %q", i, lines[i], strings.Join(w, " "))
		}
	}

	buf.Reset()
	if err := WriteTable(&buf, []Result{teacher}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "×") {
		t.Errorf("one result printed ratios:\n%s", buf.String())
	}
}

func TestReadExternal(t *testing.T) {
	in := `loading weights…
{"engine": "transformers 5.17.0", "model": "/tmp/teacher", "context": 1024, "prefill_tokens_per_s": 42000.5, "decode_tokens_per_s": 39.5, "prefill_seconds": 0.0243, "decode_tokens": 32, "repeats": 3, "peak_device_bytes": 6000000000}

{"engine": "transformers 5.17.0", "context": 4096, "prefill_tokens_per_s": 63000, "decode_tokens_per_s": 32.5, "prefill_seconds": 0.065, "peak_device_bytes": 7400000000}
{"engine": "other", "context": 1024, "prefill_tokens_per_s": 1, "decode_tokens_per_s": 2}
`
	res, err := ReadExternal(strings.NewReader(in), "hf.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Label != "transformers 5.17.0" || len(res[0].Rows) != 2 || res[1].Label != "other" || res[0].Model != "/tmp/teacher" {
		t.Fatalf("results %+v", res)
	}
	r := res[0].Rows[0]
	if r.Context != 1024 || r.PrefillTokPerS != 42000.5 || r.DecodeTokens != 32 || r.Repeats != 3 || r.PeakDeviceBytes != 6000000000 ||
		math.Abs(r.DecodeSeconds-32/39.5) > 1e-12 {
		t.Errorf("row %+v", r)
	}
	for _, bad := range []string{
		``,
		`{"engine": "x", "context": 1024, "prefill_tokens_per_s": 1`,
		`{"context": 1024, "prefill_tokens_per_s": 1, "decode_tokens_per_s": 2}`,
		`{"engine": "x", "context": 0, "prefill_tokens_per_s": 1, "decode_tokens_per_s": 2}`,
		`{"engine": "x", "context": 8, "prefill_tokens_per_s": 0, "decode_tokens_per_s": 2}`,
		"{\"engine\": \"x\", \"context\": 8, \"prefill_tokens_per_s\": 1, \"decode_tokens_per_s\": 2}\n{\"engine\": \"x\", \"context\": 8, \"prefill_tokens_per_s\": 1, \"decode_tokens_per_s\": 2}",
	} {
		if _, err := ReadExternal(strings.NewReader(bad), "bad.jsonl"); err == nil {
			t.Errorf("accepted %q", bad)
		} else if !strings.Contains(err.Error(), "bad.jsonl") {
			t.Errorf("error %q does not name the input", err)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{512: "512 B", 1536: "1.50 KiB", 7 << 30: "7.00 GiB", 3 << 40: "3.00 TiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
