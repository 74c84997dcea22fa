// Package tokenizer reads a HuggingFace tokenizer.json and encodes and decodes text exactly as the
// `tokenizers` library does, for the BPE tokenizers TinyLLaVA's language models use: byte-level BPE
// (GPT-2/Phi-2, Qwen2) and SentencePiece-style BPE with byte fallback (Llama/TinyLlama).
//
// The pipeline is the library's: added tokens are split out first (the non-normalized ones on the raw
// text, the normalized ones after normalization), the rest is normalized, pre-tokenized, and each piece
// is run through the BPE model; the post-processor adds BOS/EOS when asked. Decoding maps ids back to
// tokens and runs the decoder chain.
//
// Supported components (anything else is refused at Load with an error naming it):
//
//	normalizer:     NFC, Prepend, Replace, Sequence
//	pre_tokenizer:  ByteLevel, Split, Sequence
//	model:          BPE (vocab + merges in either file format, unk/fuse_unk, byte_fallback, ignore_merges,
//	                continuing_subword_prefix, end_of_word_suffix; no dropout)
//	post_processor: ByteLevel, TemplateProcessing (single sequence), Sequence
//	decoder:        ByteLevel, Replace, ByteFallback, Fuse, Strip, Sequence
//	added tokens:   special, lstrip, rstrip, normalized (single_word is refused)
//
// A Tokenizer is safe for concurrent use.
package tokenizer

import (
	"fmt"
	"os"
	"strings"
)

// Tokenizer encodes text to token ids and decodes ids to text.
type Tokenizer struct {
	added     *addedVocab
	norm      normalizer    // nil: none
	pre       preTokenizer  // nil: none
	mapBytes  bool          // pre leaves the final ByteLevel byte mapping to encode
	model     *bpe          // the only model kind supported
	post      postProcessor // nil: none
	dec       decoder       // nil: tokens joined by spaces, as the library does
	vocabSize int           // model vocabulary plus added tokens, counted once each
}

// Load reads a tokenizer.json file.
func Load(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", path, err)
	}
	return t, nil
}

// Encode returns the token ids of text. With addSpecial the post-processor's special tokens (e.g.
// Llama's BOS) are added, like `Tokenizer.encode(text, add_special_tokens=True)`.
//
// Encode cannot fail on any input string; it panics only if the regular-expression engine reports an
// internal failure, which it does not with the unbounded backtracking stack and no timeout used here.
func (t *Tokenizer) Encode(text string, addSpecial bool) []int {
	ids, err := t.encode(text, addSpecial)
	if err != nil {
		panic(fmt.Sprintf("tokenizer: internal error while encoding: %v", err))
	}
	return ids
}

func (t *Tokenizer) encode(text string, addSpecial bool) ([]int, error) {
	ids := make([]int, 0, len(text)/3+4)
	var buf []byte // a byte-mapped word
	for _, raw := range t.added.splitRaw(text) {
		if raw.id >= 0 {
			ids = append(ids, raw.id)
			continue
		}
		s := raw.text
		if t.norm != nil {
			var err error
			if s, err = t.norm.normalize(s); err != nil {
				return nil, err
			}
		}
		for _, p := range t.added.splitNormalized(s) {
			if p.id >= 0 {
				ids = append(ids, p.id)
				continue
			}
			words := []string{p.text}
			if t.pre != nil {
				var err error
				if words, err = t.pre.preTokenize(words); err != nil {
					return nil, err
				}
			}
			for _, w := range words {
				if t.mapBytes {
					buf = appendByteLevel(buf[:0], w)
					ids = t.model.tokenizeBytes(buf, ids)
				} else {
					ids = t.model.tokenize(w, ids)
				}
			}
		}
	}
	if t.post != nil {
		ids = t.post.process(ids, addSpecial)
	}
	return ids, nil
}

// Decode returns the text of ids, like `Tokenizer.decode(ids, skip_special_tokens=skipSpecial)`: ids that
// name no token are skipped, as the library skips them; with skipSpecial, special added tokens are too.
func (t *Tokenizer) Decode(ids []int, skipSpecial bool) string {
	tokens := make([]string, 0, len(ids))
	for _, id := range ids {
		tok, ok := t.IDToken(id)
		if !ok {
			continue
		}
		if skipSpecial && t.added.isSpecial(tok) {
			continue
		}
		tokens = append(tokens, tok)
	}
	if t.dec == nil {
		return strings.Join(tokens, " ")
	}
	return strings.Join(t.dec.decodeChain(tokens), "")
}

// TokenID returns the id of token s (an added token or a model vocabulary entry).
func (t *Tokenizer) TokenID(s string) (int, bool) {
	if id, ok := t.added.byContent[s]; ok {
		return id, true
	}
	id, ok := t.model.vocab[s]
	return id, ok
}

// IDToken returns the token string of id (an added token or a model vocabulary entry).
func (t *Tokenizer) IDToken(id int) (string, bool) {
	if tok, ok := t.added.byID[id]; ok {
		return tok.content, true
	}
	return t.model.idToken(id)
}

// IsSpecial reports whether id is a special added token (the ones Decode skips with skipSpecial).
func (t *Tokenizer) IsSpecial(id int) bool {
	tok, ok := t.added.byID[id]
	return ok && tok.special
}

// VocabSize is the number of distinct tokens, added tokens included (the library's
// get_vocab_size(with_added_tokens=True)). The model's embedding table may be larger.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }
