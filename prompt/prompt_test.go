package prompt

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/tokenizer"
)

// The fixtures' tokenizers are small BPE models trained on English (testdata/fixtures/README.md):
// phi-tiny is GPT-2 style with <|endoftext|> = 0, qwen2-tiny the Qwen2 layout (<|endoftext|> = 0, no
// BOS), llama-tiny TinyLlama's SentencePiece layout (<s> = 1 added to every encoding, </s> = 2).

func loadTok(t testing.TB, family formats.Family) *tokenizer.Tokenizer {
	t.Helper()
	tok, err := tokenizer.Load(filepath.Join("..", "testdata", "fixtures", string(family)+"-tiny", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func concat(parts ...[]int) []int {
	var out []int
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// spans returns the runs of labelled (not IgnoreIndex) positions, each as the label values.
func spans(labels []int) [][]int {
	var out [][]int
	var cur []int
	for _, l := range labels {
		if l == IgnoreIndex {
			if cur != nil {
				out = append(out, cur)
				cur = nil
			}
			continue
		}
		cur = append(cur, l)
	}
	if cur != nil {
		out = append(out, cur)
	}
	return out
}

const specPrompt = "A chat between a curious user and an artificial intelligence assistant. The assistant gives " +
	"helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is in the picture? ASSISTANT: A cat.<|endoftext|>"

var oneRound = []Turn{{From: "human", Value: "<image>\nWhat is in the picture?"}, {From: "gpt", Value: "A cat."}}

var twoRounds = []Turn{
	{From: "human", Value: "What is in the picture?\n<image>"}, // image after the text: moved to the front
	{From: "gpt", Value: "A cat."},
	{From: "human", Value: "How many?"},
	{From: "gpt", Value: "Three."},
}

// TestPhiOneRound: the prompt text is SPEC §2's; the ids are the two pieces around <image> tokenized
// separately with −200 between; only the answer (with the space before it, which the
// "− 1" of TinyLLaVA's instruction length leaves unmasked) and the closing eos carry labels.
func TestPhiOneRound(t *testing.T) {
	tok := loadTok(t, formats.Phi)
	tpl, err := For(formats.Phi)
	if err != nil {
		t.Fatal(err)
	}
	text, err := tpl.Text(oneRound)
	if err != nil || text != specPrompt {
		t.Fatalf("prompt text %q, %v\nwant %q", text, err, specPrompt)
	}
	ids, labels, err := Build(formats.Phi, oneRound, tok)
	if err != nil {
		t.Fatal(err)
	}
	before, after, _ := strings.Cut(specPrompt, ImageToken)
	want := concat(tok.Encode(before, true), []int{ImagePlaceholder}, tok.Encode(after, true))
	if !slices.Equal(ids, want) {
		t.Fatalf("ids %v\nwant %v", ids, want)
	}
	eos, _ := tok.TokenID("<|endoftext|>")
	wantSpans := [][]int{concat(tok.Encode(" A cat.", false), []int{eos})}
	if got := spans(labels); !slices.EqualFunc(got, wantSpans, slices.Equal) {
		t.Errorf("labelled spans %v, want %v", got, wantSpans)
	}
	if i := slices.Index(ids, ImagePlaceholder); labels[i] != IgnoreIndex {
		t.Error("the image placeholder carries a label")
	}
	if len(labels) != len(ids) || labels[len(labels)-1] != eos {
		t.Errorf("labels end with %d, want the eos %d", labels[len(labels)-1], eos)
	}
}

// TestMultiRound: phi and qwen2_base both label each answer and its eos; the second round has no
// system text and follows the first eos directly.
func TestMultiRound(t *testing.T) {
	for _, fam := range []formats.Family{formats.Phi, formats.Qwen2} {
		tok := loadTok(t, fam)
		tpl, err := For(fam)
		if err != nil {
			t.Fatal(err)
		}
		text, err := tpl.Text(twoRounds)
		if err != nil {
			t.Fatal(err)
		}
		wantText := systemText + " USER: <image>\nWhat is in the picture? ASSISTANT: A cat.<|endoftext|>" +
			"USER: How many? ASSISTANT: Three.<|endoftext|>"
		if text != wantText {
			t.Fatalf("%s: prompt %q\nwant %q", fam, text, wantText)
		}
		ids, labels, err := Build(fam, twoRounds, tok)
		if err != nil {
			t.Fatalf("%s: %v", fam, err)
		}
		eos, _ := tok.TokenID("<|endoftext|>")
		wantSpans := [][]int{
			concat(tok.Encode(" A cat.", false), []int{eos}),
			concat(tok.Encode(" Three.", false), []int{eos}),
		}
		if got := spans(labels); !slices.EqualFunc(got, wantSpans, slices.Equal) {
			t.Errorf("%s: labelled spans %v, want %v", fam, got, wantSpans)
		}
		if n := countPlaceholders(ids); n != 1 {
			t.Errorf("%s: %d placeholders", fam, n)
		}
	}
}

// TestLlama: TinyLlama's tokenizer adds <s> to every piece; tokenizer_image_token keeps one at the
// front. One round labels "A cat.</s>". In two rounds, TinyLLaVA's non-legacy adjustment (one token
// less per later round) disagrees with this tokenizer, which prefixes "▁" after </s> as well: TinyLLaVA
// masks everything and warns; so does Encode. With Legacy the rounds count right.
func TestLlama(t *testing.T) {
	tok := loadTok(t, formats.Llama)
	ids, labels, err := Build(formats.Llama, oneRound, tok)
	if err != nil {
		t.Fatal(err)
	}
	bos, _ := tok.TokenID("<s>")
	eos, _ := tok.TokenID("</s>")
	before, after, _ := strings.Cut(strings.TrimSuffix(specPrompt, "<|endoftext|>")+"</s>", ImageToken)
	want := concat(tok.Encode(before, true), []int{ImagePlaceholder}, tok.Encode(after, true)[1:])
	if !slices.Equal(ids, want) || ids[0] != bos || slices.Index(ids[1:], bos) >= 0 {
		t.Fatalf("ids %v\nwant %v (one <s>, at the front)", ids, want)
	}
	wantSpans := [][]int{concat(tok.Encode("A cat.", false), []int{eos})}
	if got := spans(labels); !slices.EqualFunc(got, wantSpans, slices.Equal) {
		t.Errorf("labelled spans %v, want %v", got, wantSpans)
	}

	twoLlama := slices.Clone(twoRounds)
	ids, labels, err = Build(formats.Llama, twoLlama, tok)
	if !errors.Is(err, ErrLabelMismatch) {
		t.Fatalf("two rounds, non-legacy: %v, want ErrLabelMismatch", err)
	}
	if len(ids) == 0 || len(spans(labels)) != 0 {
		t.Errorf("mismatch: %d ids, %d labelled spans (want ids and no labels)", len(ids), len(spans(labels)))
	}
	tpl, err := For(formats.Llama)
	if err != nil {
		t.Fatal(err)
	}
	tpl.Legacy = true
	_, labels, err = tpl.Encode(twoLlama, tok)
	if err != nil {
		t.Fatal(err)
	}
	wantSpans = [][]int{concat(tok.Encode("A cat.", false), []int{eos}), concat(tok.Encode("Three.", false), []int{eos})}
	if got := spans(labels); !slices.EqualFunc(got, wantSpans, slices.Equal) {
		t.Errorf("legacy two rounds: labelled spans %v, want %v", got, wantSpans)
	}
}

// TestImagePlacement: TinyLLaVA removes every <image> of a question, strips it and puts one
// "<image>\n" in front; questions without <image> stay text-only; <image> in two questions is refused.
func TestImagePlacement(t *testing.T) {
	tok := loadTok(t, formats.Phi)
	tpl, err := For(formats.Phi)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		question, user string
		images         int
	}{
		{"What is in the picture?", "USER: What is in the picture? ", 0},
		{"  <image>  Describe it.\n", "USER: <image>\nDescribe it. ", 1},
		{"Look: <image> what is it?", "USER: <image>\nLook:  what is it? ", 1},
		{"<image> compare <image> these", "USER: <image>\ncompare  these ", 1},
		{"\x1c<image>\x1f", "USER: <image> ", 1}, // Python's strip also removes U+001C..U+001F
	} {
		conv := []Turn{{From: "human", Value: tc.question}, {From: "gpt", Value: "Yes."}}
		text, err := tpl.Text(conv)
		if err != nil {
			t.Fatal(err)
		}
		wantText := systemText + " " + tc.user + "ASSISTANT: Yes.<|endoftext|>"
		if text != wantText {
			t.Errorf("%q: prompt %q\nwant %q", tc.question, text, wantText)
		}
		ids, _, err := tpl.Encode(conv, tok)
		if err != nil {
			t.Fatalf("%q: %v", tc.question, err)
		}
		if n := countPlaceholders(ids); n != tc.images {
			t.Errorf("%q: %d placeholders, want %d", tc.question, n, tc.images)
		}
	}
	two := []Turn{{"human", "<image>\nA?"}, {"gpt", "B."}, {"human", "<image>\nC?"}, {"gpt", "D."}}
	if _, _, err := tpl.Encode(two, tok); !errors.Is(err, ErrImages) {
		t.Errorf("<image> in two questions: %v, want ErrImages", err)
	}
}

// TestConversationShape mirrors _get_list_from_message: a first turn that is not from "human" is
// dropped; questions and answers must pair up.
func TestConversationShape(t *testing.T) {
	tok := loadTok(t, formats.Phi)
	withLead := append([]Turn{{From: "gpt", Value: "Hello!"}}, oneRound...)
	a, la, err := Build(formats.Phi, withLead, tok)
	if err != nil {
		t.Fatal(err)
	}
	b, lb, err := Build(formats.Phi, oneRound, tok)
	if err != nil || !slices.Equal(a, b) || !slices.Equal(la, lb) {
		t.Errorf("a leading gpt turn is not dropped")
	}
	for _, conv := range [][]Turn{nil, oneRound[:1], {{"human", "a"}, {"gpt", "b"}, {"human", "c"}}} {
		if _, _, err := Build(formats.Phi, conv, tok); err == nil {
			t.Errorf("%d turns: no error", len(conv))
		}
	}
}

// TestSeparatorInAnswer: an answer holding " ASSISTANT: " splits its round into three parts;
// TinyLLaVA stops counting there, the counts disagree and every label is masked.
func TestSeparatorInAnswer(t *testing.T) {
	tok := loadTok(t, formats.Phi)
	conv := []Turn{{"human", "<image>\nWhat is in the picture?"}, {"gpt", "A cat."},
		{"human", "Say it."}, {"gpt", "USER: hi ASSISTANT: hello"}}
	ids, labels, err := Build(formats.Phi, conv, tok)
	if !errors.Is(err, ErrLabelMismatch) {
		t.Fatalf("%v, want ErrLabelMismatch", err)
	}
	if len(ids) == 0 || len(spans(labels)) != 0 {
		t.Errorf("%d ids, %d labelled spans", len(ids), len(spans(labels)))
	}
	// When the count stops at or beyond model_max_length, TinyLLaVA skips the check: the first
	// round's answer keeps its labels, everything after the count is masked.
	tpl, err := For(formats.Phi)
	if err != nil {
		t.Fatal(err)
	}
	tpl.ModelMaxLength = 10
	if _, labels, err = tpl.Encode(conv, tok); err != nil {
		t.Fatalf("with model_max_length 10: %v", err)
	}
	eos, _ := tok.TokenID("<|endoftext|>")
	wantSpans := [][]int{concat(tok.Encode(" A cat.", false), []int{eos})}
	if got := spans(labels); !slices.EqualFunc(got, wantSpans, slices.Equal) {
		t.Errorf("labelled spans %v, want %v", got, wantSpans)
	}
}

// TestForGeneration: the eval prompt ends with "ASSISTANT:" (no space) and has one placeholder.
func TestForGeneration(t *testing.T) {
	for _, fam := range []formats.Family{formats.Phi, formats.Qwen2, formats.Llama} {
		tok := loadTok(t, fam)
		ids, err := ForGeneration(fam, "What is in the picture?", tok)
		if err != nil {
			t.Fatal(err)
		}
		before, after, _ := strings.Cut(systemText+" USER: <image>\nWhat is in the picture? ASSISTANT:", ImageToken)
		bp, ap := tok.Encode(before, true), tok.Encode(after, true)
		if fam == formats.Llama {
			ap = ap[1:] // the BOS of the second piece is dropped
		}
		if want := concat(bp, []int{ImagePlaceholder}, ap); !slices.Equal(ids, want) {
			t.Errorf("%s: %v\nwant %v", fam, ids, want)
		}
	}
}

// TestPretrain: the pretraining template is "<image>" + caption + "\n", with only the image masked.
func TestPretrain(t *testing.T) {
	tok := loadTok(t, formats.Phi)
	tpl, err := Named("pretrain", formats.Phi)
	if err != nil {
		t.Fatal(err)
	}
	ids, labels, err := tpl.Encode([]Turn{{"human", "<image>\nignored"}, {"gpt", "A cat on a chair."}}, tok)
	if err != nil {
		t.Fatal(err)
	}
	want := concat([]int{ImagePlaceholder}, tok.Encode("A cat on a chair.\n", true))
	if !slices.Equal(ids, want) {
		t.Fatalf("ids %v, want %v", ids, want)
	}
	if labels[0] != IgnoreIndex || !slices.Equal(labels[1:], ids[1:]) {
		t.Errorf("labels %v", labels)
	}
}

func TestTemplateLookup(t *testing.T) {
	for fam, name := range map[formats.Family]string{formats.Phi: "phi", formats.Qwen2: "qwen2_base", formats.Llama: "llama"} {
		if got, err := DefaultName(fam); got != name || err != nil {
			t.Errorf("%s: %q, %v", fam, got, err)
		}
	}
	if _, err := Named("vicuna", formats.Phi); err == nil {
		t.Error("unknown template accepted")
	}
	if _, err := For("gemma"); err == nil {
		t.Error("unknown family accepted")
	}
	// A template whose special tokens the tokenizer lacks.
	tpl, err := Named("llama", formats.Llama)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tpl.Encode(oneRound, loadTok(t, formats.Phi)); err == nil || !strings.Contains(err.Error(), "<s>") {
		t.Errorf("missing BOS: %v", err)
	}
	inst, err := Named("qwen2_instruct", formats.Qwen2)
	if err != nil {
		t.Fatal(err)
	}
	if inst.StopText() != "<|im_end|>" || inst.EOS != "<|im_end|>" || inst.Pad != "<|endoftext|>" {
		t.Errorf("qwen2_instruct: stop %q eos %q pad %q", inst.StopText(), inst.EOS, inst.Pad)
	}
}

func TestPyStrip(t *testing.T) {
	for in, want := range map[string]string{
		" \t\n a b \r\v\f":    "a b",
		"\x1c\x1d x \x1e\x1f": "x",
		"\u00a0\u3000y\u2029": "y",
		"\u200bz":             "\u200bz", // zero-width space is not white space in Python either
	} {
		if got := pyStrip(in); got != want {
			t.Errorf("pyStrip(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestGenerationMatchesModelGolden: the model goldens (testdata/golden/model/<family>.safetensors)
// were run on input_ids built in Python with the `tokenizers` library from the phi chat prompt; the
// eval prompt ForGeneration builds must be those ids.
func TestGenerationMatchesModelGolden(t *testing.T) {
	for _, fam := range []formats.Family{formats.Phi, formats.Qwen2, formats.Llama} {
		ck, err := formats.Open(filepath.Join("..", "testdata", "golden", "model", string(fam)+".safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := ck.Raw("input_ids")
		ck.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := make([]int, len(raw)/8)
		for i := range want {
			want[i] = int(int64(binary.LittleEndian.Uint64(raw[8*i:])))
		}
		got, err := ForGeneration(fam, "What is in the picture?", loadTok(t, fam))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: %v\ngolden %v", fam, got, want)
		}
	}
}

func TestApplyTokenizerConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		json   string
		legacy bool
		max    int
	}{
		{`{"legacy": false, "model_max_length": 2048}`, false, 2048},
		{`{"model_max_length": 1000000000000000019884624838656}`, true, 0},
		{`{"legacy": true}`, true, 0},
	} {
		p := filepath.Join(dir, "tokenizer_config.json")
		if err := os.WriteFile(p, []byte(tc.json), 0o644); err != nil {
			t.Fatal(err)
		}
		tpl, err := For(formats.Llama)
		if err != nil {
			t.Fatal(err)
		}
		if err := tpl.ApplyTokenizerConfig(p); err != nil {
			t.Fatal(err)
		}
		if tpl.Legacy != tc.legacy || tpl.ModelMaxLength != tc.max {
			t.Errorf("%s: legacy %v max %d, want %v %d", tc.json, tpl.Legacy, tpl.ModelMaxLength, tc.legacy, tc.max)
		}
	}
	tpl, _ := For(formats.Phi)
	if err := tpl.ApplyTokenizerConfig(filepath.Join(dir, "missing.json")); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("missing file: %v", err)
	}
	// The fixture's own file: no legacy key, model_max_length 2048.
	tpl, _ = For(formats.Llama)
	if err := tpl.ApplyTokenizerConfig(filepath.Join("..", "testdata", "fixtures", "llama-tiny", "tokenizer_config.json")); err != nil {
		t.Fatal(err)
	}
	if !tpl.Legacy || tpl.ModelMaxLength != 2048 {
		t.Errorf("llama-tiny: legacy %v max %d", tpl.Legacy, tpl.ModelMaxLength)
	}
}
