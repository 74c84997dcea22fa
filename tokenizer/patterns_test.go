package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// The hand-compiled GPT-2 and Qwen2 scanners must cut text exactly where the regexes do.

var patternCases = []struct {
	name    string
	pattern string
	fast    spanFinder
}{
	{"gpt2", gpt2Pattern, gpt2Splitter},
	{"qwen2", qwen2Pattern, qwen2Splitter},
}

// splitAlphabet mixes every class the patterns distinguish, with the characters of the
// contractions over-represented so that 's 're 'LL... come up often.
var splitAlphabet = []string{
	" ", " ", " ", "\t", "\n", "\r", "\r\n", "\v", "\f", "\u0085", "\u00a0", "\u2028", "\u3000", "\u200b",
	"a", "b", "Z", "é", "ſ", "漢", "Ω", "ß", "s", "t", "r", "e", "v", "m", "l", "d", "S", "R", "E", "L", "D",
	"0", "7", "½", "٣", "Ⅻ",
	"'", "'", "'", ".", ",", "!", "?", "-", "_", "(", "<", "😀", "\u200d", "\u0301", "\xff", "\xe3\x81",
}

func randomSplitText(rng *rand.Rand) string {
	var b strings.Builder
	n := rng.IntN(40)
	for range n {
		b.WriteString(splitAlphabet[rng.IntN(len(splitAlphabet))])
	}
	return b.String()
}

func checkSplitterAgainstRegex(t *testing.T, name string, slow, fast spanFinder, s string) bool {
	t.Helper()
	want, err := slow.find(s)
	if err != nil {
		t.Fatalf("%s regex on %q: %v", name, s, err)
	}
	got, _ := fast.find(s)
	if !slices.Equal(got, want) {
		t.Errorf("%s split of %q:\n got  %q\n want %q", name, s, spanTexts(s, got), spanTexts(s, want))
		return false
	}
	return true
}

func spanTexts(s string, spans []span) []string {
	out := make([]string, len(spans))
	for i, sp := range spans {
		out[i] = s[sp[0]:sp[1]]
	}
	return out
}

func TestSplittersMatchRegex(t *testing.T) {
	rng := rand.New(rand.NewPCG(20261128, 1))
	var texts []string
	for _, f := range goldenFamilies {
		for _, c := range loadGolden(t, f.family).Encode {
			texts = append(texts, c.Text)
		}
	}
	for range 20000 {
		texts = append(texts, randomSplitText(rng))
	}
	for _, pc := range patternCases {
		t.Run(pc.name, func(t *testing.T) {
			slow := mustCompileSplitRegex(pc.pattern)
			bad := 0
			for _, s := range texts {
				if !checkSplitterAgainstRegex(t, pc.name, slow, pc.fast, s) {
					if bad++; bad >= 10 {
						t.Fatal("too many differences")
					}
				}
			}
		})
	}
}

func FuzzSplitters(f *testing.F) {
	for _, s := range []string{"", "it's  a\n\n test", "x 's 'RE\r\n\t y", "1234 ½ \u00a0\u3000z", "\xff\xe3\x81 a"} {
		f.Add(s)
	}
	slow := map[string]spanFinder{}
	for _, pc := range patternCases {
		slow[pc.name] = mustCompileSplitRegex(pc.pattern)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, pc := range patternCases {
			checkSplitterAgainstRegex(t, pc.name, slow[pc.name], pc.fast, s)
		}
	})
}

func mustCompileSplitRegex(pattern string) *splitRegex {
	re, err := compileSplitRegex(pattern)
	if err != nil {
		panic(err)
	}
	return re
}
