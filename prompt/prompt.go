// Package prompt turns LLaVA-format conversations into the token ids and training labels TinyLLaVA
// feeds its language model, reproducing TinyLLaVA_Factory's templates (tinyllava/data/template) exactly:
// the same prompt text, the same tokenization of the pieces around "<image>", the same −200 image
// placeholder and the same label masking, mismatch check included.
//
// The phi template, which TinyLLaVA-Phi-2-SigLIP-3.1B was trained with, gives for one round
//
//	A chat between a curious user and an artificial intelligence assistant. The assistant gives
//	helpful, detailed, and polite answers to the user's questions. USER: <image>\n{q} ASSISTANT: {a}<|endoftext|>
//
// (one line; further rounds append "USER: {q} ASSISTANT: {a}<|endoftext|>" with no system text).
// A question holding "<image>" anywhere has every "<image>" removed, is stripped, and gets a single
// "<image>\n" in front, as TinyLLaVA does; a question without one stays text-only.
package prompt

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/tokenizer"
)

const (
	// ImageToken marks where the picture goes in a question.
	ImageToken = "<image>"
	// ImagePlaceholder is the id put in place of ImageToken (config image_token_index); the model
	// replaces it by the connector's rows.
	ImagePlaceholder = -200
	// IgnoreIndex is the label of positions that carry no loss.
	IgnoreIndex = -100
)

// Turn is one message of a LLaVA-format conversation, as in the dataset JSON:
// {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}.
type Turn struct {
	From  string `json:"from"`
	Value string `json:"value"`
}

var (
	// ErrLabelMismatch is wrapped by the error Encode returns when TinyLLaVA's round-by-round
	// recount of the tokens disagrees with the tokenized prompt. TinyLLaVA then prints a warning and
	// masks every label; Encode does the same and still returns the ids and the masked labels.
	ErrLabelMismatch = errors.New("tokenization mismatch: every label masked, as TinyLLaVA does")
	// ErrImages is wrapped by the error for a conversation that puts more than one image placeholder
	// in the sequence (several questions holding "<image>"): TinyLLaVA's model consumes one picture
	// per placeholder, and a sample has one picture.
	ErrImages = errors.New("more than one image placeholder")
)

// formatter is TinyLLaVA's Formatter: a slot with "{{content}}" (StringFormatter) or a fixed text
// (EmptyFormatter).
type formatter struct {
	slot  string
	fixed bool // EmptyFormatter: the slot is returned whatever the content
}

// apply fills the slot. A missing content (an answer still to be generated) gives the slot's text up
// to its first colon, plus the colon: "ASSISTANT:".
func (f formatter) apply(content *string) string {
	if f.fixed {
		return f.slot
	}
	if content == nil {
		head, _, _ := strings.Cut(f.slot, ":")
		return head + ":"
	}
	return strings.Replace(f.slot, "{{content}}", *content, 1)
}

// maskRule selects TinyLLaVA's make_labels/_make_masks variant.
type maskRule int

const (
	maskRounds   maskRule = iota // Template._make_masks (phi, qwen2_base, qwen2_instruct)
	maskLlama                    // LlamaTemplate._make_masks (a BOS at the start of every piece)
	maskPretrain                 // PretrainTemplate.make_labels (mask the image prefix only)
)

// Template is a TinyLLaVA conversation template (its conv_version) together with the tokenizer facts
// TinyLLaVA's encode reads: special tokens (after TinyLLaVA's own per-family pad/unk fix-ups),
// tokenizer.legacy and model_max_length.
type Template struct {
	Name string // conv_version: "phi", "qwen2_base", "qwen2_instruct", "llama" or "pretrain"

	system, image, user, assistant formatter
	sep, eos                       string // separator slot: [sep, eos]
	rule                           maskRule

	// BOS is tokenizer.bos_token ("" when the tokenizer has none, like Qwen2's). A tokenized piece
	// that starts with it is treated as carrying a BOS (tokenizer_image_token's offset).
	BOS string
	// EOS is tokenizer.eos_token and Pad tokenizer.pad_token; when they are the same token, the
	// mismatch check counts the eos strings of the prompt back in (TinyLLaVA's make_labels).
	EOS, Pad string
	// Legacy is tokenizer.legacy, read by the llama template only: when false (TinyLlama-1.1B-Chat
	// v1.0's tokenizer_config.json says "legacy": false) every round after the first is counted one
	// token shorter.
	Legacy bool
	// ModelMaxLength is tokenizer.model_max_length: at or above it TinyLLaVA skips the mismatch check.
	// 0 means no limit (the check always runs).
	ModelMaxLength int
}

const systemText = "A chat between a curious user and an artificial intelligence assistant. " +
	"The assistant gives helpful, detailed, and polite answers to the user's questions."

// conversational returns the USER/ASSISTANT template every TinyLLaVA chat template shares, closed by eos.
func conversational(name, eos string, rule maskRule) Template {
	return Template{
		Name:      name,
		system:    formatter{slot: systemText + " ", fixed: true},
		image:     formatter{slot: ImageToken + "\n{{content}}"},
		user:      formatter{slot: "USER: {{content}} "},
		assistant: formatter{slot: "ASSISTANT: {{content}}" + eos},
		sep:       " ASSISTANT: ",
		eos:       eos,
		rule:      rule,
	}
}

// Names lists the conv_version names Named accepts.
var Names = []string{"phi", "qwen2_base", "qwen2_instruct", "llama", "pretrain"}

// Named returns TinyLLaVA's template conv_version name with the tokenizer facts of the family's
// published tokenizer (see For).
func Named(name string, family formats.Family) (*Template, error) {
	var t Template
	switch name {
	case "phi":
		t = conversational(name, "<|endoftext|>", maskRounds)
	case "qwen2_base":
		t = conversational(name, "<|endoftext|>", maskRounds)
	case "qwen2_instruct":
		t = conversational(name, "<|im_end|>", maskRounds)
	case "llama":
		t = conversational(name, "</s>", maskLlama)
	case "pretrain":
		t = Template{
			Name:      name,
			system:    formatter{fixed: true},
			image:     formatter{fixed: true},
			user:      formatter{slot: ImageToken, fixed: true},
			assistant: formatter{slot: "{{content}}\n"},
			rule:      maskPretrain,
		}
	default:
		return nil, fmt.Errorf("conversation template %q: unknown (known: %s)", name, strings.Join(Names, ", "))
	}
	// TinyLLaVA's tokenizer fix-ups: phi and tinyllama set pad = unk, qwen2 sets unk = pad.
	switch family {
	case formats.Phi:
		t.BOS, t.EOS, t.Pad = "<|endoftext|>", "<|endoftext|>", "<|endoftext|>"
	case formats.Qwen2:
		t.EOS, t.Pad = "<|endoftext|>", "<|endoftext|>"
		if name == "qwen2_instruct" {
			t.EOS = "<|im_end|>"
		}
	case formats.Llama:
		t.BOS, t.EOS, t.Pad = "<s>", "</s>", "<unk>"
	default:
		return nil, fmt.Errorf("conversation template %q: unknown model family %q", name, family)
	}
	return &t, nil
}

// ApplyTokenizerConfig reads the tokenizer facts a checkpoint's tokenizer_config.json records:
// "legacy" (absent means true, transformers' default for Llama tokenizers) and "model_max_length"
// (values above 2^31, transformers' "no limit" sentinel, mean no limit). TinyLLaVA loads the tokenizer
// with model_max_length = config.json's tokenizer_model_max_length, which callers should set afterwards
// when they have it.
func (t *Template) ApplyTokenizerConfig(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("template %s: %w", t.Name, err)
	}
	var cfg struct {
		Legacy         *bool    `json:"legacy"`
		ModelMaxLength *float64 `json:"model_max_length"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fmt.Errorf("template %s: %s: %w", t.Name, path, err)
	}
	t.Legacy = cfg.Legacy == nil || *cfg.Legacy
	t.ModelMaxLength = 0
	if m := cfg.ModelMaxLength; m != nil && *m > 0 && *m < 1<<31 {
		t.ModelMaxLength = int(*m)
	}
	return nil
}

// DefaultName is the conv_version TinyLLaVA's training scripts use for a family: phi for Phi-2,
// qwen2_base for Qwen2-0.5B, llama for TinyLlama.
func DefaultName(family formats.Family) (string, error) {
	switch family {
	case formats.Phi:
		return "phi", nil
	case formats.Qwen2:
		return "qwen2_base", nil
	case formats.Llama:
		return "llama", nil
	}
	return "", fmt.Errorf("no conversation template for model family %q", family)
}

// For returns the family's default template (DefaultName) with its published tokenizer's facts.
func For(family formats.Family) (*Template, error) {
	name, err := DefaultName(family)
	if err != nil {
		return nil, err
	}
	return Named(name, family)
}

// Build tokenizes a training conversation with the family's default template; see Template.Encode.
func Build(family formats.Family, conversation []Turn, tok *tokenizer.Tokenizer) (ids, labels []int, err error) {
	t, err := For(family)
	if err != nil {
		return nil, nil, err
	}
	return t.Encode(conversation, tok)
}

// ForGeneration returns the ids of the prompt that asks question about a picture and ends with
// "ASSISTANT:" for the model to continue, as TinyLLaVA's eval scripts build it (the question gets
// "<image>\n" in front).
func ForGeneration(family formats.Family, question string, tok *tokenizer.Tokenizer) ([]int, error) {
	t, err := For(family)
	if err != nil {
		return nil, err
	}
	return t.GenerationIDs(question, tok)
}

// split separates a conversation into questions and answers as TinyLLaVA's _get_list_from_message
// does: a first turn not from "human" is dropped, then turns alternate question, answer by position
// (the "from" fields are not checked further).
func split(conversation []Turn) (questions, answers []string, err error) {
	first := 0
	for i, m := range conversation {
		if i == 0 && m.From != "human" {
			first = 1
			continue
		}
		if i%2 == first {
			questions = append(questions, m.Value)
		} else {
			answers = append(answers, m.Value)
		}
	}
	if len(questions) != len(answers) {
		return nil, nil, fmt.Errorf("conversation has %d questions and %d answers", len(questions), len(answers))
	}
	if len(questions) == 0 {
		return nil, nil, errors.New("conversation has no question and answer")
	}
	return questions, answers, nil
}

// Text returns the prompt text of a conversation (TinyLLaVA's Template.prompt).
func (t *Template) Text(conversation []Turn) (string, error) {
	q, a, err := split(conversation)
	if err != nil {
		return "", err
	}
	answers := make([]*string, len(a))
	for i := range a {
		answers[i] = &a[i]
	}
	return t.text(q, answers), nil
}

// text builds the prompt; a nil answer is one still to be generated.
func (t *Template) text(questions []string, answers []*string) string {
	var b strings.Builder
	for i, q := range questions {
		if i == 0 {
			b.WriteString(t.system.apply(nil))
		}
		if strings.Contains(q, ImageToken) {
			q = pyStrip(strings.ReplaceAll(q, ImageToken, ""))
			q = pyStrip(t.image.apply(&q))
		}
		b.WriteString(t.user.apply(&q))
		b.WriteString(t.assistant.apply(answers[i]))
	}
	return b.String()
}

// pyStrip is Python's str.strip(): Unicode white space plus the separators U+001C..U+001F.
func pyStrip(s string) string {
	return strings.TrimFunc(s, func(r rune) bool { return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f) })
}

// specialIDs holds the token ids a template needs from the tokenizer.
type specialIDs struct {
	bos, eos, pad int // −1 when the template names no such token
}

func (t *Template) lookup(tok *tokenizer.Tokenizer) (specialIDs, error) {
	get := func(what, s string) (int, error) {
		if s == "" {
			return -1, nil
		}
		id, ok := tok.TokenID(s)
		if !ok {
			return 0, fmt.Errorf("template %s: the tokenizer has no %s token %q", t.Name, what, s)
		}
		return id, nil
	}
	var r specialIDs
	var err error
	if r.bos, err = get("BOS", t.BOS); err != nil {
		return r, err
	}
	if r.eos, err = get("EOS", t.EOS); err != nil {
		return r, err
	}
	r.pad, err = get("pad", t.Pad)
	return r, err
}

// tokenizeWithImage is TinyLLaVA's tokenizer_image_token: the text is split at every "<image>", each
// piece tokenized on its own (special tokens added, as tokenizer(chunk) does), the pieces joined with
// the placeholder. When the first piece starts with the BOS, one BOS is kept at the front and the first
// token of every piece is dropped.
func tokenizeWithImage(text string, tok *tokenizer.Tokenizer, bos int) []int {
	pieces := strings.Split(text, ImageToken)
	chunks := make([][]int, len(pieces))
	for i, p := range pieces {
		chunks[i] = tok.Encode(p, true)
	}
	var out []int
	offset := 0
	if len(chunks) > 0 && len(chunks[0]) > 0 && bos >= 0 && chunks[0][0] == bos {
		offset = 1
		out = append(out, chunks[0][0])
	}
	for i, c := range chunks {
		if i > 0 {
			out = append(out, ImagePlaceholder) // the separator [−200]·(offset+1), minus offset
		}
		if len(c) > offset {
			out = append(out, c[offset:]...)
		}
	}
	return out
}

// Encode tokenizes a training conversation and labels it as TinyLLaVA's Template.encode does:
// ids are the tokenized prompt with ImagePlaceholder where the picture goes; labels copy the ids,
// with IgnoreIndex on the system text, every question and its "ASSISTANT:" prefix, and on the image
// placeholder, so that only the answers and the eos closing each of them carry loss.
//
// The masking is TinyLLaVA's, computed the way it computes it (each round's text re-tokenized alone),
// so its quirks are kept: when the recount disagrees with the tokenized prompt, every label is masked
// and the error wraps ErrLabelMismatch (the ids and masked labels are still returned, as TinyLLaVA still
// trains on the sample).
func (t *Template) Encode(conversation []Turn, tok *tokenizer.Tokenizer) (ids, labels []int, err error) {
	q, a, err := split(conversation)
	if err != nil {
		return nil, nil, fmt.Errorf("template %s: %w", t.Name, err)
	}
	special, err := t.lookup(tok)
	if err != nil {
		return nil, nil, err
	}
	answers := make([]*string, len(a))
	for i := range a {
		answers[i] = &a[i]
	}
	text := t.text(q, answers)
	ids = tokenizeWithImage(text, tok, special.bos)
	if n := countPlaceholders(ids); n > 1 {
		return nil, nil, fmt.Errorf("template %s: %w: %d (questions or answers holding %q)", t.Name, ErrImages, n, ImageToken)
	}
	labels, mismatch := t.labels(ids, text, tok, special)
	for i, id := range ids {
		if id == ImagePlaceholder {
			labels[i] = IgnoreIndex
		}
	}
	if mismatch != nil {
		return ids, labels, fmt.Errorf("template %s: %w", t.Name, mismatch)
	}
	return ids, labels, nil
}

func countPlaceholders(ids []int) int {
	n := 0
	for _, id := range ids {
		if id == ImagePlaceholder {
			n++
		}
	}
	return n
}

// labels is TinyLLaVA's make_labels. It returns a non-nil error (wrapping ErrLabelMismatch) when the
// labels were all masked because of a count mismatch.
func (t *Template) labels(ids []int, text string, tok *tokenizer.Tokenizer, special specialIDs) ([]int, error) {
	labels := append([]int(nil), ids...)
	if t.rule == maskPretrain {
		n := len(tokenizeWithImage(ImageToken, tok, special.bos))
		maskRange(labels, 0, n)
		return labels, nil
	}
	total := 0
	for _, id := range ids {
		if id != special.pad {
			total++
		}
	}
	if special.pad >= 0 && special.pad == special.eos {
		total += strings.Count(text, t.eos)
	}
	rounds := strings.Split(text, t.eos)
	eosLen := len(tok.Encode(t.eos, true))
	var cur int
	if t.rule == maskLlama {
		cur = t.llamaMasks(labels, tok, special.bos, rounds)
	} else {
		cur = t.roundMasks(labels, tok, special.bos, eosLen, rounds)
	}
	if t.ModelMaxLength > 0 && cur >= t.ModelMaxLength {
		return labels, nil
	}
	if cur != total {
		maskRange(labels, 0, len(labels))
		return labels, fmt.Errorf("%w: the rounds count %d tokens, the prompt has %d", ErrLabelMismatch, cur, total)
	}
	return labels, nil
}

// maskRange sets labels[from:to] to IgnoreIndex with Python's slice clipping (an empty or reversed
// range does nothing).
func maskRange(labels []int, from, to int) {
	from = min(max(from, 0), len(labels))
	to = min(max(to, from), len(labels))
	for i := from; i < to; i++ {
		labels[i] = IgnoreIndex
	}
}

// roundMasks is Template._make_masks: per round (text up to an eos), mask the tokens of the text up to
// and including the separator, minus one (the separator's trailing space, which joins the answer's
// first word in the full round), then advance by the round's tokens plus the eos.
func (t *Template) roundMasks(labels []int, tok *tokenizer.Tokenizer, bos, eosLen int, rounds []string) int {
	cur := 0
	for _, r := range rounds {
		if r == "" {
			break
		}
		parts := strings.Split(r, t.sep)
		if len(parts) != 2 {
			break
		}
		roundLen := len(tokenizeWithImage(r, tok, bos)) + eosLen
		instrLen := len(tokenizeWithImage(parts[0]+t.sep, tok, bos)) - 1
		maskRange(labels, cur, cur+instrLen)
		cur += roundLen
	}
	maskRange(labels, cur, len(labels))
	return cur
}

// llamaMasks is LlamaTemplate._make_masks: the leading BOS is masked, each round's tokenization loses
// its own BOS, and with a non-legacy tokenizer rounds after the first count one token less.
func (t *Template) llamaMasks(labels []int, tok *tokenizer.Tokenizer, bos int, rounds []string) int {
	const eosLen, bosLen = 1, 1
	cur := 1
	maskRange(labels, 0, cur)
	for i, r := range rounds {
		if r == "" {
			break
		}
		parts := strings.Split(r, t.sep)
		if len(parts) != 2 {
			break
		}
		roundLen := len(tokenizeWithImage(r, tok, bos)) + eosLen - bosLen
		instrLen := len(tokenizeWithImage(parts[0]+t.sep, tok, bos)) - 1 - bosLen
		if i != 0 && !t.Legacy {
			roundLen--
			instrLen--
		}
		maskRange(labels, cur, cur+instrLen)
		cur += roundLen
	}
	maskRange(labels, cur, len(labels))
	return cur
}

// GenerationIDs returns the ids of the prompt for one question about a picture, ending with
// "ASSISTANT:" (TinyLLaVA's encode in eval mode, after its eval scripts put "<image>\n" in front of the
// question).
func (t *Template) GenerationIDs(question string, tok *tokenizer.Tokenizer) ([]int, error) {
	special, err := t.lookup(tok)
	if err != nil {
		return nil, err
	}
	text := t.text([]string{ImageToken + "\n" + question}, []*string{nil})
	ids := tokenizeWithImage(text, tok, special.bos)
	if n := countPlaceholders(ids); n != 1 {
		return nil, fmt.Errorf("template %s: %w: %d", t.Name, ErrImages, n)
	}
	return ids, nil
}

// StopText is the text that ends an answer (TinyLLaVA's separator[1], its generation stop string).
func (t *Template) StopText() string { return t.eos }
