package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The fixtures and their golden outputs come from the `tokenizers` library itself
// (testdata/gen/make_fixtures.py); see testdata/fixtures/README.md.
var goldenFamilies = []struct{ family, dir string }{
	{"phi", "phi-tiny"},     // byte-level BPE, GPT-2 regex, added tokens with lstrip/rstrip
	{"qwen2", "qwen2-tiny"}, // NFC + Split(Qwen2 regex) + ByteLevel, a normalized added token
	{"llama", "llama-tiny"}, // SentencePiece-style BPE, byte fallback, TemplateProcessing BOS
}

type goldenFile struct {
	Family            string            `json:"family"`
	TokenizersVersion string            `json:"tokenizers_version"`
	VocabSize         int               `json:"vocab_size_with_added"`
	AddedTokens       map[string]string `json:"added_tokens"`
	Encode            []struct {
		Text       string   `json:"text"`
		AddSpecial bool     `json:"add_special_tokens"`
		IDs        []int    `json:"ids"`
		Tokens     []string `json:"tokens"`
	} `json:"encode"`
	Decode []struct {
		IDs         []int  `json:"ids"`
		SkipSpecial bool   `json:"skip_special_tokens"`
		Text        string `json:"text"`
	} `json:"decode"`
}

func fixtureTokenizerPath(dir string) string {
	return filepath.Join("..", "testdata", "fixtures", dir, "tokenizer.json")
}

func loadGolden(t testing.TB, family string) *goldenFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "testdata", "golden", "tokenizer", family+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var g goldenFile
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatalf("golden %s: %v", family, err)
	}
	if len(g.Encode) < 120 || len(g.Decode) < 120 {
		t.Fatalf("golden %s: only %d encode and %d decode cases", family, len(g.Encode), len(g.Decode))
	}
	return &g
}

func loadFixture(t testing.TB, dir string) *Tokenizer {
	t.Helper()
	tok, err := Load(fixtureTokenizerPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (tk *Tokenizer) tokenStrings(ids []int) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		s, ok := tk.IDToken(id)
		if !ok {
			s = "<?" + strconv.Itoa(id) + ">"
		}
		out[i] = s
	}
	return out
}

func TestGoldenEncode(t *testing.T) {
	for _, f := range goldenFamilies {
		t.Run(f.family, func(t *testing.T) {
			g := loadGolden(t, f.family)
			tk := loadFixture(t, f.dir)
			bad := 0
			for _, c := range g.Encode {
				got := tk.Encode(c.Text, c.AddSpecial)
				if !slices.Equal(got, c.IDs) {
					bad++
					if bad <= 10 {
						t.Errorf("Encode(%q, %v)\n got  %v %q\n want %v %q",
							c.Text, c.AddSpecial, got, tk.tokenStrings(got), c.IDs, c.Tokens)
					}
					continue
				}
				// The library reports an added token by the text it covered, so an lstrip/rstrip token
				// shows the whitespace it swallowed; compare those by content.
				toks := tk.tokenStrings(got)
				for i := range toks {
					same := toks[i] == c.Tokens[i]
					if _, added := tk.added.byID[got[i]]; added {
						idx := strings.Index(c.Tokens[i], toks[i])
						same = idx >= 0 && strings.TrimSpace(c.Tokens[i][:idx]+c.Tokens[i][idx+len(toks[i]):]) == ""
					}
					if !same {
						bad++
						t.Errorf("Encode(%q): token %d is %q, want %q", c.Text, i, toks[i], c.Tokens[i])
					}
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d encode cases differ from tokenizers %s", bad, len(g.Encode), g.TokenizersVersion)
			}
		})
	}
}

func TestGoldenDecode(t *testing.T) {
	for _, f := range goldenFamilies {
		t.Run(f.family, func(t *testing.T) {
			g := loadGolden(t, f.family)
			tk := loadFixture(t, f.dir)
			bad := 0
			for _, c := range g.Decode {
				if got := tk.Decode(c.IDs, c.SkipSpecial); got != c.Text {
					bad++
					if bad <= 10 {
						t.Errorf("Decode(%v %q, skip=%v)\n got  %q\n want %q",
							c.IDs, tk.tokenStrings(c.IDs), c.SkipSpecial, got, c.Text)
					}
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d decode cases differ from tokenizers %s", bad, len(g.Decode), g.TokenizersVersion)
			}
		})
	}
}

func TestGoldenVocabulary(t *testing.T) {
	for _, f := range goldenFamilies {
		t.Run(f.family, func(t *testing.T) {
			g := loadGolden(t, f.family)
			tk := loadFixture(t, f.dir)
			if tk.VocabSize() != g.VocabSize {
				t.Errorf("VocabSize %d, want %d", tk.VocabSize(), g.VocabSize)
			}
			if len(g.AddedTokens) == 0 {
				t.Fatal("golden lists no added tokens")
			}
			for sid, content := range g.AddedTokens {
				want, err := strconv.Atoi(sid)
				if err != nil {
					t.Fatal(err)
				}
				if id, ok := tk.TokenID(content); !ok || id != want {
					t.Errorf("TokenID(%q) = %d, %v; want %d", content, id, ok, want)
				}
				if s, ok := tk.IDToken(want); !ok || s != content {
					t.Errorf("IDToken(%d) = %q, %v; want %q", want, s, ok, content)
				}
				// Special or not, as the golden decode with skip_special_tokens shows.
				if skipped := tk.Decode([]int{want}, true) == ""; tk.IsSpecial(want) != skipped {
					t.Errorf("IsSpecial(%d %q) = %v, but Decode(skipSpecial) skips it: %v", want, content, tk.IsSpecial(want), skipped)
				}
			}
			if _, ok := tk.TokenID("definitely not a token"); ok {
				t.Error("TokenID found a token that does not exist")
			}
			if _, ok := tk.IDToken(1 << 20); ok {
				t.Error("IDToken found an id that does not exist")
			}
		})
	}
}
