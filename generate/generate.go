// Package generate decodes text from a loaded TinyLLaVA model (teacher or
// hybrid): prefill the prompt, then sample one token at a time with the
// model's KV cache and Mamba states, streaming text as it becomes whole.
package generate

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/matsurgery/matsurgery/model"
	"github.com/matsurgery/matsurgery/tokenizer"
)

// Options of a generation.
type Options struct {
	MaxNewTokens int     // default 128
	Temperature  float64 // 0 = greedy
	TopP         float64 // nucleus sampling mass in (0, 1]; 0 or 1 = off
	Seed         uint64
	StopIDs      []int // generation ends after any of these (eos)
}

// Result of a generation.
type Result struct {
	PromptTokens   int     `json:"prompt_tokens"`   // text tokens plus image rows
	NewTokens      []int   `json:"new_tokens"`      // generated ids, stop token included
	Text           string  `json:"text"`            // decoded, special tokens skipped
	StoppedBy      string  `json:"stopped_by"`      // "eos" or "max_new_tokens"
	PrefillSeconds float64 `json:"prefill_seconds"` //
	DecodeSeconds  float64 `json:"decode_seconds"`  //
	PrefillTokPerS float64 `json:"prefill_tokens_per_s"`
	DecodeTokPerS  float64 `json:"decode_tokens_per_s"`
}

// Run generates from a prompt of ids (image placeholders allowed, with their
// pixels) and calls emit with each newly completed piece of text.
func Run(m *model.Model, tok *tokenizer.Tokenizer, pixels []float32, ids []int, o Options, emit func(string) error) (*Result, error) {
	if o.MaxNewTokens <= 0 {
		o.MaxNewTokens = 128
	}
	if o.Temperature < 0 || math.IsNaN(o.Temperature) {
		return nil, fmt.Errorf("temperature %v: must be ≥ 0", o.Temperature)
	}
	if o.TopP < 0 || o.TopP > 1 || math.IsNaN(o.TopP) {
		return nil, fmt.Errorf("top-p %v: must be in (0, 1]", o.TopP)
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x9e3779b97f4a7c15))
	stop := map[int]bool{}
	for _, s := range o.StopIDs {
		stop[s] = true
	}
	res := &Result{PromptTokens: m.SequenceLength(ids), StoppedBy: "max_new_tokens"}
	t0 := time.Now()
	logits, err := m.Prefill(pixels, ids)
	if err != nil {
		return nil, err
	}
	res.PrefillSeconds = time.Since(t0).Seconds()
	st := newStreamer(tok, emit)
	t1 := time.Now()
	for i := 0; i < o.MaxNewTokens; i++ {
		next := Sample(logits, o.Temperature, o.TopP, rng)
		res.NewTokens = append(res.NewTokens, next)
		if stop[next] {
			res.StoppedBy = "eos"
			break
		}
		if err := st.push(next); err != nil {
			return nil, err
		}
		if i == o.MaxNewTokens-1 {
			break
		}
		if logits, err = m.Step(next); err != nil {
			return nil, err
		}
	}
	res.DecodeSeconds = time.Since(t1).Seconds()
	if err := st.flush(); err != nil {
		return nil, err
	}
	res.Text = st.text
	if res.PrefillSeconds > 0 {
		res.PrefillTokPerS = float64(res.PromptTokens) / res.PrefillSeconds
	}
	if res.DecodeSeconds > 0 && len(res.NewTokens) > 1 {
		res.DecodeTokPerS = float64(len(res.NewTokens)-1) / res.DecodeSeconds
	}
	return res, nil
}

// Sample draws the next token: argmax when temperature is 0, else from
// softmax(logits/temperature) restricted to the smallest set of tokens whose
// mass reaches topP. Ties in argmax go to the lowest id.
func Sample(logits []float32, temperature, topP float64, r *rand.Rand) int {
	if temperature == 0 {
		best := 0
		for i, v := range logits {
			if v > logits[best] || (math.IsNaN(float64(logits[best])) && !math.IsNaN(float64(v))) {
				best = i
			}
		}
		return best
	}
	maxv := math.Inf(-1)
	for _, v := range logits {
		if float64(v) > maxv {
			maxv = float64(v)
		}
	}
	type cand struct {
		id int
		p  float64
	}
	c := make([]cand, 0, len(logits))
	var sum float64
	for i, v := range logits {
		p := math.Exp((float64(v) - maxv) / temperature)
		if p > 0 && !math.IsNaN(p) {
			c = append(c, cand{i, p})
			sum += p
		}
	}
	if len(c) == 0 {
		return Sample(logits, 0, 0, r)
	}
	if topP > 0 && topP < 1 {
		sort.Slice(c, func(i, j int) bool { return c[i].p > c[j].p || (c[i].p == c[j].p && c[i].id < c[j].id) })
		var acc float64
		for k := range c {
			acc += c[k].p / sum
			if acc >= topP {
				c = c[:k+1]
				break
			}
		}
		sum = 0
		for _, x := range c {
			sum += x.p
		}
	}
	u := r.Float64() * sum
	for _, x := range c {
		u -= x.p
		if u < 0 {
			return x.id
		}
	}
	return c[len(c)-1].id
}

// streamer turns token ids into text pieces, holding back a piece while it
// ends in an incomplete UTF-8 sequence (decoded as U+FFFD).
type streamer struct {
	tok     *tokenizer.Tokenizer
	emit    func(string) error
	ids     []int
	text    string // emitted so far
	pending bool
}

func newStreamer(tok *tokenizer.Tokenizer, emit func(string) error) *streamer {
	if emit == nil {
		emit = func(string) error { return nil }
	}
	return &streamer{tok: tok, emit: emit}
}

func (s *streamer) push(id int) error {
	s.ids = append(s.ids, id)
	full := s.tok.Decode(s.ids, true)
	if strings.HasSuffix(full, string(utf8.RuneError)) {
		s.pending = true
		return nil
	}
	return s.out(full)
}

func (s *streamer) flush() error {
	if !s.pending {
		return nil
	}
	return s.out(s.tok.Decode(s.ids, true))
}

func (s *streamer) out(full string) error {
	s.pending = false
	if !strings.HasPrefix(full, s.text) {
		// The decoder rewrote earlier text (e.g. a merged space): emit nothing
		// twice; continue from the new text.
		if len(full) <= len(s.text) {
			s.text = full
			return nil
		}
		piece := full[commonPrefix(full, s.text):]
		s.text = full
		return s.emit(piece)
	}
	piece := full[len(s.text):]
	s.text = full
	if piece == "" {
		return nil
	}
	return s.emit(piece)
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// StopIDs returns the end-of-sequence ids of a tokenizer for a family:
// the usual names (<|endoftext|>, </s>, <|im_end|>) that it holds.
func StopIDs(tok *tokenizer.Tokenizer, extra ...int) []int {
	var out []int
	for _, name := range []string{"<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>"} {
		if id, ok := tok.TokenID(name); ok {
			out = append(out, id)
		}
	}
	return append(out, extra...)
}
