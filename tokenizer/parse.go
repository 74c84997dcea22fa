package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// fileJSON is the top level of tokenizer.json.
type fileJSON struct {
	Version       string           `json:"version"`
	Truncation    json.RawMessage  `json:"truncation"`
	Padding       json.RawMessage  `json:"padding"`
	AddedTokens   []addedTokenJSON `json:"added_tokens"`
	Normalizer    json.RawMessage  `json:"normalizer"`
	PreTokenizer  json.RawMessage  `json:"pre_tokenizer"`
	PostProcessor json.RawMessage  `json:"post_processor"`
	Decoder       json.RawMessage  `json:"decoder"`
	Model         json.RawMessage  `json:"model"`
}

type addedTokenJSON struct {
	ID         *int    `json:"id"`
	Content    *string `json:"content"`
	SingleWord bool    `json:"single_word"`
	LStrip     bool    `json:"lstrip"`
	RStrip     bool    `json:"rstrip"`
	Normalized *bool   `json:"normalized"`
	Special    bool    `json:"special"`
}

// Parse builds a Tokenizer from the bytes of a tokenizer.json file.
func Parse(data []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("parsing tokenizer.json: %w", err)
	}
	if !isNull(f.Truncation) {
		return nil, errors.New("truncation is set: truncating tokenizers are not supported (set it to null)")
	}
	if !isNull(f.Padding) {
		return nil, errors.New("padding is set: padding tokenizers are not supported (set it to null)")
	}
	t := &Tokenizer{}
	var err error
	if isNull(f.Model) {
		return nil, errors.New("model: missing")
	}
	if t.model, err = parseModel(f.Model); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if !isNull(f.Normalizer) {
		if t.norm, err = parseNormalizer(f.Normalizer); err != nil {
			return nil, fmt.Errorf("normalizer: %w", err)
		}
	}
	if !isNull(f.PreTokenizer) {
		if t.pre, err = parsePreTokenizer(f.PreTokenizer); err != nil {
			return nil, fmt.Errorf("pre_tokenizer: %w", err)
		}
		t.pre, t.mapBytes = withDeferredMapping(t.pre)
	}
	if !isNull(f.PostProcessor) {
		if t.post, err = parsePostProcessor(f.PostProcessor); err != nil {
			return nil, fmt.Errorf("post_processor: %w", err)
		}
	}
	if !isNull(f.Decoder) {
		if t.dec, err = parseDecoder(f.Decoder); err != nil {
			return nil, fmt.Errorf("decoder: %w", err)
		}
	}
	tokens := make([]*addedToken, 0, len(f.AddedTokens))
	for i, a := range f.AddedTokens {
		if a.ID == nil || a.Content == nil {
			return nil, fmt.Errorf("added_tokens[%d]: id and content are required", i)
		}
		if *a.ID < 0 {
			return nil, fmt.Errorf("added_tokens[%d] %q: negative id %d", i, *a.Content, *a.ID)
		}
		if *a.Content == "" {
			return nil, fmt.Errorf("added_tokens[%d]: empty content", i)
		}
		if a.SingleWord {
			return nil, fmt.Errorf("added_tokens[%d] %q: single_word added tokens are not supported", i, *a.Content)
		}
		// The library's default: special tokens are not normalized, others are.
		normalized := !a.Special
		if a.Normalized != nil {
			normalized = *a.Normalized
		}
		tokens = append(tokens, &addedToken{
			id: *a.ID, content: *a.Content, lstrip: a.LStrip, rstrip: a.RStrip,
			normalized: normalized, special: a.Special,
		})
	}
	if t.added, err = newAddedVocab(tokens, t.norm); err != nil {
		return nil, fmt.Errorf("added_tokens: %w", err)
	}
	if t.post != nil {
		if err := checkPostProcessor(t.post, t); err != nil {
			return nil, fmt.Errorf("post_processor: %w", err)
		}
	}
	t.vocabSize = len(t.model.vocab)
	for _, a := range tokens {
		if _, ok := t.model.vocab[a.content]; !ok {
			t.vocabSize++
		}
	}
	return t, nil
}

func isNull(m json.RawMessage) bool {
	m = bytes.TrimSpace(m)
	return len(m) == 0 || bytes.Equal(m, []byte("null"))
}

// componentType reads the "type" field of a component.
func componentType(m json.RawMessage) (string, error) {
	var h struct {
		Type *string `json:"type"`
	}
	if err := json.Unmarshal(m, &h); err != nil {
		return "", err
	}
	if h.Type == nil {
		return "", nil
	}
	return *h.Type, nil
}

// patternJSON is a Split/Replace pattern: {"String": "..."} or {"Regex": "..."}.
type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}
