package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/text/unicode/norm"
)

type normalizer interface {
	normalize(s string) (string, error)
}

func parseNormalizer(m json.RawMessage) (normalizer, error) {
	typ, err := componentType(m)
	if err != nil {
		return nil, err
	}
	switch typ {
	case "NFC":
		return nfc{}, nil
	case "Prepend":
		var c struct {
			Prepend *string `json:"prepend"`
		}
		if err := json.Unmarshal(m, &c); err != nil {
			return nil, fmt.Errorf("Prepend: %w", err)
		}
		if c.Prepend == nil {
			return nil, errors.New("Prepend: missing prepend")
		}
		return prepend(*c.Prepend), nil
	case "Replace":
		r, err := parseReplace(m)
		if err != nil {
			return nil, fmt.Errorf("Replace: %w", err)
		}
		return r, nil
	case "Sequence":
		var c struct {
			Normalizers []json.RawMessage `json:"normalizers"`
		}
		if err := json.Unmarshal(m, &c); err != nil {
			return nil, fmt.Errorf("Sequence: %w", err)
		}
		seq := make(normalizerSequence, 0, len(c.Normalizers))
		for i, sub := range c.Normalizers {
			n, err := parseNormalizer(sub)
			if err != nil {
				return nil, fmt.Errorf("Sequence[%d]: %w", i, err)
			}
			seq = append(seq, n)
		}
		return seq, nil
	case "":
		return nil, errors.New("component without a type")
	}
	return nil, fmt.Errorf("normalizer %q is not supported (supported: NFC, Prepend, Replace, Sequence)", typ)
}

// nfc is Unicode canonical composition.
type nfc struct{}

func (nfc) normalize(s string) (string, error) { return norm.NFC.String(s), nil }

// prepend puts a string in front of non-empty text (Llama's "▁").
type prepend string

func (p prepend) normalize(s string) (string, error) {
	if s == "" {
		return s, nil
	}
	return string(p) + s, nil
}

type normalizerSequence []normalizer

func (q normalizerSequence) normalize(s string) (string, error) {
	for _, n := range q {
		var err error
		if s, err = n.normalize(s); err != nil {
			return "", err
		}
	}
	return s, nil
}

// replace substitutes every match of a literal string or a regular expression; it serves as both a
// normalizer and a decoder.
type replace struct {
	literal string
	re      *splitRegex // nil: literal
	content string
}

func parseReplace(m json.RawMessage) (*replace, error) {
	var c struct {
		Pattern patternJSON `json:"pattern"`
		Content *string     `json:"content"`
	}
	if err := json.Unmarshal(m, &c); err != nil {
		return nil, err
	}
	if c.Content == nil {
		return nil, errors.New("missing content")
	}
	r := &replace{content: *c.Content}
	switch {
	case c.Pattern.String != nil:
		if *c.Pattern.String == "" {
			return nil, errors.New("empty String pattern")
		}
		r.literal = *c.Pattern.String
	case c.Pattern.Regex != nil:
		re, err := compileSplitRegex(*c.Pattern.Regex)
		if err != nil {
			return nil, err
		}
		r.re = re
	default:
		return nil, errors.New("pattern must be {\"String\": ...} or {\"Regex\": ...}")
	}
	return r, nil
}

func (r *replace) normalize(s string) (string, error) { return r.apply(s) }

func (r *replace) apply(s string) (string, error) {
	if r.re == nil {
		return strings.ReplaceAll(s, r.literal, r.content), nil
	}
	spans, err := r.re.find(s)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	last := 0
	for _, sp := range spans {
		b.WriteString(s[last:sp[0]])
		b.WriteString(r.content)
		last = sp[1]
	}
	b.WriteString(s[last:])
	return b.String(), nil
}
