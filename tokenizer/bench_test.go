package tokenizer

import (
	"strings"
	"testing"
)

// benchText is the golden corpus joined into one document (~6 KB of mixed scripts, code, emoji).
func benchText(b *testing.B, family string) string {
	g := loadGolden(b, family)
	var sb strings.Builder
	seen := map[string]bool{}
	for _, c := range g.Encode {
		if !seen[c.Text] {
			seen[c.Text] = true
			sb.WriteString(c.Text)
			sb.WriteString("\n")
		}
	}
	return sb.String()
}

// BenchmarkEncode measures encoding throughput on distinct documents: the BPE word cache is cleared
// every iteration, so each run pays for the merges as a first encode would.
func BenchmarkEncode(b *testing.B) {
	for _, f := range goldenFamilies {
		b.Run(f.family, func(b *testing.B) {
			text := benchText(b, f.family)
			tk := loadFixture(b, f.dir)
			tokens := 0
			b.SetBytes(int64(len(text)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tk.model.resetCache()
				tokens += len(tk.Encode(text, true))
			}
			b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// BenchmarkEncodeCached is the steady state of encoding many documents with a shared vocabulary:
// repeated words come from the cache.
func BenchmarkEncodeCached(b *testing.B) {
	for _, f := range goldenFamilies {
		b.Run(f.family, func(b *testing.B) {
			text := benchText(b, f.family)
			tk := loadFixture(b, f.dir)
			tokens := 0
			b.SetBytes(int64(len(text)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tokens += len(tk.Encode(text, true))
			}
			b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, f := range goldenFamilies {
		b.Run(f.family, func(b *testing.B) {
			text := benchText(b, f.family)
			tk := loadFixture(b, f.dir)
			ids := tk.Encode(text, false)
			b.SetBytes(int64(len(text)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				_ = tk.Decode(ids, false)
			}
			b.ReportMetric(float64(len(ids)*b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}
