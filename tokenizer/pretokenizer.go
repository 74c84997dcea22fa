package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/dlclark/regexp2/v2"
)

// preTokenizer cuts normalized text into the words the model tokenizes one by one. It may also
// rewrite them (ByteLevel maps bytes to printable characters). Empty words are dropped.
type preTokenizer interface {
	preTokenize(words []string) ([]string, error)
}

func parsePreTokenizer(m json.RawMessage) (preTokenizer, error) {
	typ, err := componentType(m)
	if err != nil {
		return nil, err
	}
	switch typ {
	case "ByteLevel":
		var c struct {
			AddPrefixSpace bool  `json:"add_prefix_space"`
			UseRegex       *bool `json:"use_regex"`
		}
		if err := json.Unmarshal(m, &c); err != nil {
			return nil, fmt.Errorf("ByteLevel: %w", err)
		}
		b := &byteLevelPre{addPrefixSpace: c.AddPrefixSpace}
		if c.UseRegex == nil || *c.UseRegex {
			b.split = gpt2Splitter
		}
		return b, nil
	case "Split":
		s, err := parseSplit(m)
		if err != nil {
			return nil, fmt.Errorf("Split: %w", err)
		}
		return s, nil
	case "Sequence":
		var c struct {
			PreTokenizers []json.RawMessage `json:"pretokenizers"`
		}
		if err := json.Unmarshal(m, &c); err != nil {
			return nil, fmt.Errorf("Sequence: %w", err)
		}
		seq := make(preSequence, 0, len(c.PreTokenizers))
		for i, sub := range c.PreTokenizers {
			p, err := parsePreTokenizer(sub)
			if err != nil {
				return nil, fmt.Errorf("Sequence[%d]: %w", i, err)
			}
			seq = append(seq, p)
		}
		return seq, nil
	case "":
		return nil, errors.New("component without a type")
	}
	return nil, fmt.Errorf("pre-tokenizer %q is not supported (supported: ByteLevel, Split, Sequence)", typ)
}

type preSequence []preTokenizer

func (q preSequence) preTokenize(words []string) ([]string, error) {
	for _, p := range q {
		var err error
		if words, err = p.preTokenize(words); err != nil {
			return nil, err
		}
	}
	return words, nil
}

// byteLevelPre is the ByteLevel pre-tokenizer: an optional leading space, an optional split by the
// GPT-2 pattern, then every byte mapped to its printable stand-in. With deferMapping the words are
// returned unmapped and the caller maps them (into a reused buffer) just before the model.
type byteLevelPre struct {
	addPrefixSpace bool
	split          spanFinder // nil: no split
	deferMapping   bool
}

func (b *byteLevelPre) preTokenize(words []string) ([]string, error) {
	out := make([]string, 0, len(words)+len(words)/2)
	emit := func(w string) {
		if b.deferMapping {
			out = append(out, w)
		} else {
			out = append(out, byteLevelEncode(w))
		}
	}
	for _, w := range words {
		if b.addPrefixSpace && !strings.HasPrefix(w, " ") {
			w = " " + w
		}
		switch f := b.split.(type) {
		case nil:
			if w != "" {
				emit(w)
			}
		case scanFinder:
			for i := 0; i < len(w); {
				j := f(w, i)
				emit(w[i:j])
				i = j
			}
		default:
			spans, err := f.find(w)
			if err != nil {
				return nil, err
			}
			for _, sp := range splitSpans(len(w), spans, splitIsolated, false) {
				emit(w[sp[0]:sp[1]])
			}
		}
	}
	return out, nil
}

// withDeferredMapping returns p with the byte mapping of a final ByteLevel step left to the caller,
// and whether it did so.
func withDeferredMapping(p preTokenizer) (preTokenizer, bool) {
	switch p := p.(type) {
	case *byteLevelPre:
		c := *p
		c.deferMapping = true
		return &c, true
	case preSequence:
		if len(p) == 0 {
			return p, false
		}
		last, ok := withDeferredMapping(p[len(p)-1])
		if !ok {
			return p, false
		}
		c := append(preSequence(nil), p...)
		c[len(c)-1] = last
		return c, true
	}
	return p, false
}

// splitBehavior says what happens to the matches of a Split pattern.
type splitBehavior int

const (
	splitRemoved splitBehavior = iota
	splitIsolated
	splitMergedWithPrevious
	splitMergedWithNext
	splitContiguous
)

var splitBehaviors = map[string]splitBehavior{
	"Removed":            splitRemoved,
	"Isolated":           splitIsolated,
	"MergedWithPrevious": splitMergedWithPrevious,
	"MergedWithNext":     splitMergedWithNext,
	"Contiguous":         splitContiguous,
}

// split is the Split pre-tokenizer.
type split struct {
	find     spanFinder
	behavior splitBehavior
	invert   bool
}

func parseSplit(m json.RawMessage) (*split, error) {
	var c struct {
		Pattern  patternJSON `json:"pattern"`
		Behavior string      `json:"behavior"`
		Invert   bool        `json:"invert"`
	}
	if err := json.Unmarshal(m, &c); err != nil {
		return nil, err
	}
	b, ok := splitBehaviors[c.Behavior]
	if !ok {
		return nil, fmt.Errorf("behavior %q is not supported (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)", c.Behavior)
	}
	s := &split{behavior: b, invert: c.Invert}
	switch {
	case c.Pattern.String != nil:
		s.find = literalFinder(*c.Pattern.String)
	case c.Pattern.Regex != nil:
		if known, ok := knownPatterns[*c.Pattern.Regex]; ok {
			s.find = known
			break
		}
		re, err := compileSplitRegex(*c.Pattern.Regex)
		if err != nil {
			return nil, err
		}
		s.find = re
	default:
		return nil, errors.New("pattern must be {\"String\": ...} or {\"Regex\": ...}")
	}
	return s, nil
}

func (s *split) preTokenize(words []string) ([]string, error) {
	out := make([]string, 0, len(words))
	for _, w := range words {
		if w == "" {
			continue
		}
		spans, err := s.find.find(w)
		if err != nil {
			return nil, err
		}
		for _, sp := range splitSpans(len(w), spans, s.behavior, s.invert) {
			out = append(out, w[sp[0]:sp[1]])
		}
	}
	return out, nil
}

// span is a byte range [start, end).
type span [2]int

// splitSpans applies a Split behavior to the matches of a pattern in a string of length n, as the
// library's NormalizedString::split does. Empty spans are dropped.
func splitSpans(n int, matches []span, behavior splitBehavior, invert bool) []span {
	type part struct {
		sp      span
		isMatch bool
	}
	// Matches and gaps covering the whole string.
	parts := make([]part, 0, 2*len(matches)+1)
	prev := 0
	for _, m := range matches {
		if prev != m[0] {
			parts = append(parts, part{span{prev, m[0]}, invert})
		}
		parts = append(parts, part{m, !invert})
		prev = m[1]
	}
	if prev != n {
		parts = append(parts, part{span{prev, n}, invert})
	}
	var kept []span
	switch behavior {
	case splitIsolated:
		for _, p := range parts {
			kept = append(kept, p.sp)
		}
	case splitRemoved:
		for _, p := range parts {
			if !p.isMatch {
				kept = append(kept, p.sp)
			}
		}
	case splitContiguous:
		prevMatch := false
		for _, p := range parts {
			if p.isMatch == prevMatch && len(kept) > 0 {
				kept[len(kept)-1][1] = p.sp[1]
			} else {
				kept = append(kept, p.sp)
			}
			prevMatch = p.isMatch
		}
	case splitMergedWithPrevious:
		prevMatch := false
		for _, p := range parts {
			if p.isMatch && !prevMatch && len(kept) > 0 {
				kept[len(kept)-1][1] = p.sp[1]
			} else {
				kept = append(kept, p.sp)
			}
			prevMatch = p.isMatch
		}
	case splitMergedWithNext:
		prevMatch := false
		for i := len(parts) - 1; i >= 0; i-- {
			p := parts[i]
			if p.isMatch && !prevMatch && len(kept) > 0 {
				kept[len(kept)-1][0] = p.sp[0]
			} else {
				kept = append(kept, p.sp)
			}
			prevMatch = p.isMatch
		}
		for i, j := 0, len(kept)-1; i < j; i, j = i+1, j-1 {
			kept[i], kept[j] = kept[j], kept[i]
		}
	}
	out := kept[:0]
	for _, sp := range kept {
		if sp[0] < sp[1] {
			out = append(out, sp)
		}
	}
	return out
}

// spanFinder finds the non-overlapping matches of a pattern, left to right, as byte spans.
type spanFinder interface {
	find(s string) ([]span, error)
}

type literalFinder string

func (l literalFinder) find(s string) ([]span, error) {
	if l == "" {
		return nil, nil
	}
	var out []span
	for i := 0; ; {
		j := strings.Index(s[i:], string(l))
		if j < 0 {
			return out, nil
		}
		out = append(out, span{i + j, i + j + len(l)})
		i += j + len(l)
	}
}

// splitRegex is a pattern from tokenizer.json. The library uses Oniguruma; regexp2's .NET syntax
// accepts the patterns tokenizers ship (lookahead, \p{L}, inline (?i:...)), which Go's regexp cannot.
type splitRegex struct {
	re *regexp2.Regexp
}

func compileSplitRegex(pattern string) (*splitRegex, error) {
	re, err := regexp2.Compile(pattern, regexp2.None, regexp2.OptionMaxBacktrackingStackSize(-1))
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", pattern, err)
	}
	return &splitRegex{re: re}, nil
}

func (r *splitRegex) find(s string) ([]span, error) {
	idx, err := r.re.FindAllStringIndex(s, -1)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", r.re.String(), err)
	}
	out := make([]span, len(idx))
	for i, p := range idx {
		out[i] = span{p[0], p[1]}
	}
	return out, nil
}
