package dataset

import (
	"bytes"
	"encoding/json"
)

// recordShape is what Open reads of a record: the kinds of its fields, enough to check it, without
// decoding its text. Kinds are the first byte of a JSON value ('{', '[', '"', 'n' for null, 't'/'f',
// a digit or '-'), 0 for a field that is absent.
type recordShape struct {
	kind          byte
	id, image     []byte // the values' JSON text (nil when absent), slices of the record
	conversations byte
	turns         []turnShape
}

type turnShape struct {
	kind        byte
	from, value byte
	human       bool // "from" is the string "human"
}

// read fills s from the JSON text of one record. The text must be one valid JSON value (the stream
// decoder has checked it); as in encoding/json, a repeated key counts by its last value. Keys match
// exactly, as Python's dict lookups do.
func (s *recordShape) read(b []byte) {
	*s = recordShape{turns: s.turns[:0]}
	w := walker{b: b}
	s.kind = w.peek()
	if s.kind != '{' {
		return
	}
	w.objectKeys(func(key []byte) {
		start := w.i
		switch {
		case keyIs(key, "id"):
			w.skipValue()
			s.id = b[start:w.i]
		case keyIs(key, "image"):
			w.skipValue()
			s.image = b[start:w.i]
		case keyIs(key, "conversations"):
			s.conversations = w.peek()
			s.turns = s.turns[:0]
			if s.conversations != '[' {
				w.skipValue()
				return
			}
			w.arrayItems(func() {
				t := turnShape{kind: w.peek()}
				if t.kind != '{' {
					w.skipValue()
				} else {
					w.objectKeys(func(key []byte) {
						switch {
						case keyIs(key, "from"):
							t.from = w.peek()
							vs := w.i
							w.skipValue()
							t.human = t.from == '"' && keyIs(b[vs:w.i], "human")
						case keyIs(key, "value"):
							t.value = w.peek()
							w.skipValue()
						default:
							w.skipValue()
						}
					})
				}
				s.turns = append(s.turns, t)
			})
		default:
			w.skipValue()
		}
	})
}

// keyIs reports whether the JSON string raw (quotes included) spells name.
func keyIs(raw []byte, name string) bool {
	if len(raw) == len(name)+2 && string(raw[1:len(raw)-1]) == name {
		return true
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return false
	}
	var s string // an escaped spelling
	return json.Unmarshal(raw, &s) == nil && s == name
}

// walker steps through valid JSON text. It never reads past the end: on text that ends early it
// stops where it is.
type walker struct {
	b []byte
	i int
}

// peek skips white space and returns the next byte (0 at the end).
func (w *walker) peek() byte {
	for w.i < len(w.b) && isSpace(w.b[w.i]) {
		w.i++
	}
	if w.i >= len(w.b) {
		w.i = len(w.b)
		return 0
	}
	return w.b[w.i]
}

// skipString steps over the string that starts at w.i.
func (w *walker) skipString() {
	w.i++ // the opening quote
	for {
		q := bytes.IndexByte(w.b[w.i:], '"')
		if q < 0 {
			w.i = len(w.b)
			return
		}
		w.i += q + 1
		backslashes := 0
		for j := w.i - 2; j >= 0 && w.b[j] == '\\'; j-- {
			backslashes++
		}
		if backslashes%2 == 0 {
			return
		}
	}
}

// skipValue steps over the value that starts at the next non-space byte.
func (w *walker) skipValue() {
	switch w.peek() {
	case 0:
		return
	case '"':
		w.skipString()
	case '{', '[':
		depth := 0
		for w.i < len(w.b) {
			switch w.b[w.i] {
			case '"':
				w.skipString()
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			w.i++
			if depth == 0 {
				return
			}
		}
	default: // number, true, false, null
		for w.i < len(w.b) {
			switch w.b[w.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return
			}
			w.i++
		}
	}
}

// objectKeys steps through the object at the next non-space byte, calling f for each key with the
// walker at the key's value; f must step over the value.
func (w *walker) objectKeys(f func(key []byte)) {
	w.peek()
	w.i++ // '{'
	for {
		switch w.peek() {
		case 0:
			return
		case '}':
			w.i++
			return
		case ',':
			w.i++
			continue
		}
		start := w.i
		w.skipString()
		key := w.b[start:w.i]
		if w.peek() != ':' {
			return
		}
		w.i++
		w.peek()
		before := w.i
		f(key)
		w.ensureProgress(before)
	}
}

// arrayItems steps through the array at the next non-space byte, calling f with the walker at each
// item; f must step over the item.
func (w *walker) arrayItems(f func()) {
	w.peek()
	w.i++ // '['
	for {
		switch w.peek() {
		case 0:
			return
		case ']':
			w.i++
			return
		case ',':
			w.i++
			continue
		}
		before := w.i
		f()
		w.ensureProgress(before)
	}
}

// ensureProgress steps over a value, or at least a byte, when the walker is still at before: on
// valid JSON it never has to, and on anything else the walk still ends.
func (w *walker) ensureProgress(before int) {
	if w.i == before {
		w.skipValue()
	}
	if w.i == before && w.i < len(w.b) {
		w.i++
	}
}
