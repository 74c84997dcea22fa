package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// tinyBPE builds a tokenizer.json around a small hand-made BPE model.
func tinyBPE(t *testing.T, model map[string]any, extra map[string]any) *Tokenizer {
	t.Helper()
	model["type"] = "BPE"
	doc := map[string]any{"version": "1.0", "added_tokens": []any{}, "model": model}
	for k, v := range extra {
		doc[k] = v
	}
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func TestBPEMergesAndUnknowns(t *testing.T) {
	vocab := map[string]int{"a": 0, "b": 1, "c": 2, "ab": 3, "aa": 4, "abc": 5, "<unk>": 6}
	cases := []struct {
		name  string
		model map[string]any
		text  string
		want  []int
	}{
		// Equal ranks merge left to right: aaaa -> aa aa, aaa -> aa a.
		{"ties left to right", map[string]any{"vocab": vocab, "merges": []string{"a a"}}, "aaaa", []int{4, 4}},
		{"odd tie", map[string]any{"vocab": vocab, "merges": []string{"a a"}}, "aaa", []int{4, 0}},
		// The lower rank wins: with "a b" ranked first, "aab" becomes a ab.
		{"rank order", map[string]any{"vocab": vocab, "merges": [][]string{{"a", "b"}, {"a", "a"}}}, "aab", []int{0, 3}},
		{"rank order reversed", map[string]any{"vocab": vocab, "merges": [][]string{{"a", "a"}, {"a", "b"}}}, "aab", []int{4, 1}},
		// A merge creates a pair that merges next.
		{"chained", map[string]any{"vocab": vocab, "merges": []string{"a b", "ab c"}}, "abc", []int{5}},
		// Unknown characters: one <unk> per character, or one per run with fuse_unk.
		{"unk", map[string]any{"vocab": vocab, "merges": []string{"a b"}, "unk_token": "<unk>"}, "xaby", []int{6, 3, 6}},
		{"unk run", map[string]any{"vocab": vocab, "merges": []string{}, "unk_token": "<unk>"}, "axyb", []int{0, 6, 6, 1}},
		{"fused unk run", map[string]any{"vocab": vocab, "merges": []string{}, "unk_token": "<unk>", "fuse_unk": true}, "axyb", []int{0, 6, 1}},
		{"no unk token drops", map[string]any{"vocab": vocab, "merges": []string{}}, "axb", []int{0, 1}},
		// ignore_merges takes a whole word straight from the vocab.
		{"ignore_merges", map[string]any{"vocab": vocab, "merges": []string{}, "ignore_merges": true}, "abc", []int{5}},
		{"without ignore_merges", map[string]any{"vocab": vocab, "merges": []string{}}, "abc", []int{0, 1, 2}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tk := tinyBPE(t, c.model, nil)
			if got := tk.Encode(c.text, false); !slices.Equal(got, c.want) {
				t.Errorf("Encode(%q) = %v, want %v", c.text, got, c.want)
			}
		})
	}
}

func TestBPESubwordPrefixAndSuffix(t *testing.T) {
	// With continuing_subword_prefix "##" the characters after the first are looked up as "##b",
	// "##c</w>" (end_of_word_suffix "</w>" marks the last one), and a merge drops the prefix of its
	// right part: ("a", "##b") -> "ab", ("ab", "##c</w>") -> "abc</w>".
	vocab := map[string]int{"a": 0, "##b": 1, "ab": 2, "##c</w>": 3, "abc</w>": 4}
	for _, c := range []struct {
		merges []string
		want   []int
	}{
		{[]string{}, []int{0, 1, 3}},
		{[]string{"a ##b"}, []int{2, 3}},
		{[]string{"a ##b", "ab ##c</w>"}, []int{4}},
	} {
		tk := tinyBPE(t, map[string]any{
			"vocab": vocab, "merges": c.merges, "continuing_subword_prefix": "##", "end_of_word_suffix": "</w>",
		}, nil)
		if got := tk.Encode("abc", false); !slices.Equal(got, c.want) {
			t.Errorf("merges %q: Encode(abc) = %v, want %v", c.merges, got, c.want)
		}
	}
}

func TestByteFallbackEncode(t *testing.T) {
	vocab := map[string]int{"<unk>": 0, "a": 1}
	for b := 0; b < 256; b++ {
		vocab[byteTokenName(byte(b))] = 2 + b
	}
	tk := tinyBPE(t, map[string]any{"vocab": vocab, "merges": []string{}, "unk_token": "<unk>", "byte_fallback": true}, nil)
	// "é" is not in the vocab: its two UTF-8 bytes C3 A9 become <0xC3> <0xA9>.
	want := []int{1, 2 + 0xC3, 2 + 0xA9, 1}
	if got := tk.Encode("aéa", false); !slices.Equal(got, want) {
		t.Errorf("Encode(aéa) = %v, want %v", got, want)
	}
}

func byteTokenName(b byte) string {
	const hex = "0123456789ABCDEF"
	return "<0x" + string(hex[b>>4]) + string(hex[b&15]) + ">"
}

func TestTemplateAfterSequence(t *testing.T) {
	tk := tinyBPE(t, map[string]any{"vocab": map[string]int{"<s>": 0, "</s>": 1, "a": 2}, "merges": []string{}},
		map[string]any{"post_processor": map[string]any{
			"type": "TemplateProcessing",
			"single": []any{
				map[string]any{"SpecialToken": map[string]any{"id": "<s>", "type_id": 0}},
				map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}},
				map[string]any{"SpecialToken": map[string]any{"id": "</s>", "type_id": 0}},
			},
			"pair":           []any{},
			"special_tokens": map[string]any{"<s>": map[string]any{"id": "<s>", "ids": []int{0}, "tokens": []string{"<s>"}}, "</s>": map[string]any{"id": "</s>", "ids": []int{1}, "tokens": []string{"</s>"}}},
		}})
	if got := tk.Encode("aa", true); !slices.Equal(got, []int{0, 2, 2, 1}) {
		t.Errorf("Encode(aa, addSpecial) = %v, want [0 2 2 1]", got)
	}
	if got := tk.Encode("aa", false); !slices.Equal(got, []int{2, 2}) {
		t.Errorf("Encode(aa) = %v, want [2 2]", got)
	}
}

func TestSplitBehaviors(t *testing.T) {
	// The example of the tokenizers documentation for SplitDelimiterBehavior.
	const text = "the-final--countdown"
	cases := []struct {
		behavior splitBehavior
		invert   bool
		want     []string
	}{
		{splitRemoved, false, []string{"the", "final", "countdown"}},
		{splitIsolated, false, []string{"the", "-", "final", "-", "-", "countdown"}},
		{splitMergedWithPrevious, false, []string{"the-", "final-", "-", "countdown"}},
		{splitMergedWithNext, false, []string{"the", "-final", "-", "-countdown"}},
		{splitContiguous, false, []string{"the", "-", "final", "--", "countdown"}},
		// Inverted, the words are the matches: removing the non-matches keeps the dashes.
		{splitRemoved, true, []string{"-", "-", "-"}},
	}
	for _, c := range cases {
		s := &split{find: literalFinder("-"), behavior: c.behavior, invert: c.invert}
		got, err := s.preTokenize([]string{text})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("behavior %d invert %v: %q, want %q", c.behavior, c.invert, got, c.want)
		}
	}
}

func TestLossyUTF8(t *testing.T) {
	cases := []struct{ in, want string }{
		{"plain ascii", "plain ascii"},
		{"Hello \xF0\x90\x80World", "Hello \uFFFDWorld"}, // Rust's from_utf8_lossy documentation
		// Unicode 15 §3.9, Table 3-8 (maximal subparts): 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64.
		{"\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd"},
		{"\xED\xA0\x80", "\uFFFD\uFFFD\uFFFD"}, // a surrogate: ED is a maximal subpart on its own
		{"\xE0\x80", "\uFFFD\uFFFD"},           // overlong lead
		{"\xF4\x90\x80\x80", "\uFFFD\uFFFD\uFFFD\uFFFD"},
		{"\xE3\x81", "\uFFFD"},
		{"é\xff漢", "é\uFFFD漢"},
	}
	for _, c := range cases {
		if got := lossyUTF8([]byte(c.in)); got != c.want {
			t.Errorf("lossyUTF8(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestByteFallbackDecoder(t *testing.T) {
	cases := []struct {
		in, want []string
	}{
		{[]string{"<0xE5>", "<0x8f>", "<0xab>", "a"}, []string{"叫", "a"}},
		{[]string{"<0xE5>", "<0x8f>", "a"}, []string{"\uFFFD", "\uFFFD", "a"}}, // one per byte of a bad run
		{[]string{"<0x61>", "<0x62>"}, []string{"ab"}},
		{[]string{"<0x6>", "<0xZZ>", "<0x616>"}, []string{"<0x6>", "<0xZZ>", "<0x616>"}}, // not byte tokens
	}
	for _, c := range cases {
		if got := (byteFallbackDecoder{}).decodeChain(c.in); !slices.Equal(got, c.want) {
			t.Errorf("ByteFallback(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestStripDecoder(t *testing.T) {
	d := stripDecoder{content: ' ', start: 1, stop: 2}
	got := d.decodeChain([]string{"  a  ", " b", "c   ", "   "})
	want := []string{" a", "b", "c ", ""}
	if !slices.Equal(got, want) {
		t.Errorf("Strip = %q, want %q", got, want)
	}
}

// TestUnsupported checks that every component outside the supported set is refused at load time
// with an error that names it.
func TestUnsupported(t *testing.T) {
	base, err := os.ReadFile(fixtureTokenizerPath("phi-tiny"))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(doc map[string]any)) []byte {
		var doc map[string]any
		if err := json.Unmarshal(base, &doc); err != nil {
			t.Fatal(err)
		}
		f(doc)
		out, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	model := func(doc map[string]any) map[string]any { return doc["model"].(map[string]any) }
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"Unigram model", edit(func(d map[string]any) { model(d)["type"] = "Unigram" }), "model Unigram is not supported"},
		{"WordPiece model", edit(func(d map[string]any) { model(d)["type"] = "WordPiece" }), "model WordPiece is not supported"},
		{"dropout", edit(func(d map[string]any) { model(d)["dropout"] = 0.1 }), "dropout"},
		{"merge out of vocab", edit(func(d map[string]any) { model(d)["merges"] = []string{"zzz q"} }), `"zzz" is not in the vocab`},
		{"bad merge", edit(func(d map[string]any) { model(d)["merges"] = []string{"abc"} }), "not two tokens"},
		{"normalizer", edit(func(d map[string]any) { d["normalizer"] = map[string]any{"type": "BertNormalizer"} }), `normalizer "BertNormalizer" is not supported`},
		{"nested normalizer", edit(func(d map[string]any) {
			d["normalizer"] = map[string]any{"type": "Sequence", "normalizers": []any{map[string]any{"type": "NFC"}, map[string]any{"type": "NFKD"}}}
		}), `Sequence[1]: normalizer "NFKD" is not supported`},
		{"pre-tokenizer", edit(func(d map[string]any) { d["pre_tokenizer"] = map[string]any{"type": "Metaspace"} }), `pre-tokenizer "Metaspace" is not supported`},
		{"split behavior", edit(func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "Sideways"}
		}), `behavior "Sideways"`},
		{"bad regex", edit(func(d map[string]any) {
			d["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"Regex": "(unclosed"}, "behavior": "Isolated"}
		}), "regex"},
		{"post-processor", edit(func(d map[string]any) { d["post_processor"] = map[string]any{"type": "BertProcessing"} }), `post-processor "BertProcessing" is not supported`},
		{"pair-only template", edit(func(d map[string]any) {
			d["post_processor"] = map[string]any{"type": "TemplateProcessing", "single": []any{map[string]any{"Sequence": map[string]any{"id": "B", "type_id": 0}}}}
		}), `sequence "B"`},
		{"decoder", edit(func(d map[string]any) { d["decoder"] = map[string]any{"type": "WordPiece"} }), `decoder "WordPiece" is not supported`},
		{"truncation", edit(func(d map[string]any) { d["truncation"] = map[string]any{"max_length": 8} }), "truncation"},
		{"padding", edit(func(d map[string]any) { d["padding"] = map[string]any{"pad_id": 0} }), "padding"},
		{"single_word", edit(func(d map[string]any) {
			d["added_tokens"] = []any{map[string]any{"id": 5, "content": "x", "single_word": true}}
		}), "single_word"},
		{"untyped component", edit(func(d map[string]any) { d["decoder"] = map[string]any{"kind": "ByteLevel"} }), "without a type"},
		{"not JSON", []byte("{"), "parsing tokenizer.json"},
		{"no model", []byte(`{"version": "1.0"}`), "model: missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.data)
			if err == nil {
				t.Fatalf("Parse accepted it")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope", "tokenizer.json")
	if _, err := Load(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing) error %v does not name the file", err)
	}
	bad := filepath.Join(t.TempDir(), "tokenizer.json")
	if err := os.WriteFile(bad, []byte(`{"model": {"type": "Unigram"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "Unigram") {
		t.Errorf("Load(bad) error %v does not name the file and the component", err)
	}
}

// TestConcurrentEncode runs encoders in parallel over one Tokenizer (the BPE cache is shared);
// run with -race to check the locking.
func TestConcurrentEncode(t *testing.T) {
	for _, f := range goldenFamilies {
		g := loadGolden(t, f.family)
		tk := loadFixture(t, f.dir)
		var wg sync.WaitGroup
		errs := make(chan string, 8)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range g.Encode {
					c := g.Encode[(i+w*37)%len(g.Encode)]
					if got := tk.Encode(c.Text, c.AddSpecial); !slices.Equal(got, c.IDs) {
						errs <- f.family + ": " + c.Text
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Errorf("concurrent encode differs: %q", e)
		}
	}
}

func TestReplaceRegexAndPostSequence(t *testing.T) {
	// A Regex Replace normalizer (digits runs -> "#"), and a Sequence post-processor (ByteLevel then a
	// template), as Llama-3's file has.
	vocab := map[string]int{"<s>": 0, "a": 1, "#": 2, "b": 3}
	tk := tinyBPE(t, map[string]any{"vocab": vocab, "merges": []string{}}, map[string]any{
		"normalizer": map[string]any{"type": "Replace", "pattern": map[string]any{"Regex": `\d+`}, "content": "#"},
		"post_processor": map[string]any{"type": "Sequence", "processors": []any{
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
			map[string]any{
				"type":           "TemplateProcessing",
				"single":         []any{map[string]any{"SpecialToken": map[string]any{"id": "<s>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
				"special_tokens": map[string]any{"<s>": map[string]any{"id": "<s>", "ids": []int{0}, "tokens": []string{"<s>"}}},
			},
		}},
		"decoder": map[string]any{"type": "Replace", "pattern": map[string]any{"String": "#"}, "content": "<num>"},
	})
	if got := tk.Encode("a123b4", true); !slices.Equal(got, []int{0, 1, 2, 3, 2}) {
		t.Errorf("Encode = %v, want [0 1 2 3 2]", got)
	}
	if got := tk.Decode([]int{1, 2, 3}, false); got != "a<num>b" {
		t.Errorf("Decode = %q, want %q", got, "a<num>b")
	}
}

func TestByteLevelMappingDeferredOrNot(t *testing.T) {
	// The encoder defers ByteLevel's byte mapping to a reused buffer; a ByteLevel step that is not
	// last must map itself. Both must give the same words.
	text := "it's  a\ttest 1234 漢字 😀\n"
	eager := &byteLevelPre{split: gpt2Splitter}
	lazy, ok := withDeferredMapping(preSequence{eager})
	if !ok {
		t.Fatal("final ByteLevel not deferred")
	}
	e, _ := eager.preTokenize([]string{text})
	l, _ := lazy.preTokenize([]string{text})
	if len(e) != len(l) || len(e) < 8 {
		t.Fatalf("eager %q, deferred %q", e, l)
	}
	for i := range e {
		if got := string(appendByteLevel(nil, l[i])); got != e[i] {
			t.Errorf("word %d: deferred+mapped %q, eager %q", i, got, e[i])
		}
	}
	if _, ok := withDeferredMapping(preSequence{eager, &split{find: literalFinder("Ġ"), behavior: splitRemoved}}); ok {
		t.Error("a ByteLevel followed by another step was deferred")
	}
}
