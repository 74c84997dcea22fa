package tokenizer

import (
	"fmt"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedToken is one entry of tokenizer.json's added_tokens.
type addedToken struct {
	id         int
	content    string
	lstrip     bool // swallow the whitespace before a match
	rstrip     bool // swallow the whitespace after a match
	normalized bool // matched on the normalized text (else on the raw text)
	special    bool // skipped by Decode(skipSpecial)
}

// addedVocab splits added tokens out of the text before the model sees it.
type addedVocab struct {
	byID      map[int]*addedToken
	byContent map[string]int
	special   map[string]bool
	raw       matcher // non-normalized tokens, matched on the raw text
	norm      matcher // normalized tokens, matched (by their normalized content) on the normalized text
}

// piece is a span of text, or an added token when id >= 0.
type piece struct {
	text string
	id   int
}

func newAddedVocab(tokens []*addedToken, norm normalizer) (*addedVocab, error) {
	v := &addedVocab{
		byID:      make(map[int]*addedToken, len(tokens)),
		byContent: make(map[string]int, len(tokens)),
		special:   make(map[string]bool),
	}
	for _, a := range tokens {
		if prev, dup := v.byID[a.id]; dup {
			return nil, fmt.Errorf("id %d is used by both %q and %q", a.id, prev.content, a.content)
		}
		v.byID[a.id] = a
		v.byContent[a.content] = a.id
		if a.special {
			v.special[a.content] = true
		}
		if a.normalized {
			content := a.content
			if norm != nil {
				var err error
				if content, err = norm.normalize(content); err != nil {
					return nil, fmt.Errorf("normalizing %q: %w", a.content, err)
				}
			}
			if content == "" {
				return nil, fmt.Errorf("%q normalizes to the empty string", a.content)
			}
			v.norm.add(content, a)
		} else {
			v.raw.add(a.content, a)
		}
	}
	v.raw.finish()
	v.norm.finish()
	return v, nil
}

func (v *addedVocab) isSpecial(token string) bool { return v.special[token] }

func (v *addedVocab) splitRaw(s string) []piece        { return v.raw.split(s) }
func (v *addedVocab) splitNormalized(s string) []piece { return v.norm.split(s) }

// matcher finds added tokens leftmost-longest, like the library's Aho-Corasick automaton.
type matcher struct {
	byFirst [256][]matchPattern // by the pattern's first byte, longest first
	n       int
}

type matchPattern struct {
	text string
	tok  *addedToken
}

func (m *matcher) add(text string, tok *addedToken) {
	m.byFirst[text[0]] = append(m.byFirst[text[0]], matchPattern{text, tok})
	m.n++
}

func (m *matcher) finish() {
	for _, ps := range &m.byFirst {
		// Longest first; among equal lengths the first declared wins (stable).
		sort.SliceStable(ps, func(i, j int) bool { return len(ps[i].text) > len(ps[j].text) })
	}
}

// next returns the leftmost-longest match at or after from, or ok=false.
func (m *matcher) next(s string, from int) (start, end int, tok *addedToken, ok bool) {
	for i := from; i < len(s); i++ {
		for _, p := range m.byFirst[s[i]] {
			if strings.HasPrefix(s[i:], p.text) {
				return i, i + len(p.text), p.tok, true
			}
		}
	}
	return 0, 0, nil, false
}

// split cuts s into text pieces and added tokens, applying lstrip/rstrip as the library's
// find_matches does. Empty text pieces are dropped.
func (m *matcher) split(s string) []piece {
	if m.n == 0 {
		if s == "" {
			return nil
		}
		return []piece{{text: s, id: -1}}
	}
	var out []piece
	offset := 0   // end of the previous split
	searchAt := 0 // where the automaton resumes: the end of the previous match, before rstrip
	for {
		start, end, tok, ok := m.next(s, searchAt)
		if !ok {
			break
		}
		searchAt = end
		if tok.lstrip {
			start = max(leftmostSpaceAtEnd(s[:start]), offset)
		}
		if tok.rstrip {
			end += rightmostSpaceAtStart(s[end:])
		}
		if offset < start {
			out = append(out, piece{text: s[offset:start], id: -1})
		}
		out = append(out, piece{text: s[start:end], id: tok.id})
		// Like the library, the search resumes after the match itself, not after what rstrip
		// swallowed, so a token made of whitespace can still match inside that run.
		offset = end
	}
	if offset < len(s) {
		out = append(out, piece{text: s[offset:], id: -1})
	}
	return out
}

// leftmostSpaceAtEnd is the byte offset where the trailing whitespace of s begins.
func leftmostSpaceAtEnd(s string) int {
	i := len(s)
	for i > 0 {
		r, size := utf8.DecodeLastRuneInString(s[:i])
		if !unicode.IsSpace(r) {
			break
		}
		i -= size
	}
	return i
}

// rightmostSpaceAtStart is the byte length of the leading whitespace of s.
func rightmostSpaceAtStart(s string) int {
	i := 0
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if !unicode.IsSpace(r) {
			break
		}
		i += size
	}
	return i
}
