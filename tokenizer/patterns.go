package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// gpt2Pattern is the split pattern built into the ByteLevel pre-tokenizer (GPT-2, Phi-2).
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

// qwen2Pattern is the Split pattern of Qwen2's tokenizer.json.
const qwen2Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// The two patterns are hand-compiled below: a backtracking regex engine spends most of the encode
// time on them. The hand-written scanners follow the alternation order and backtracking of the
// regexes exactly; tests check them against regexp2 running the patterns themselves.
var (
	gpt2Splitter  spanFinder = scanFinder(gpt2Next)
	qwen2Splitter spanFinder = scanFinder(qwen2Next)
)

// knownPatterns maps a Split pattern to its hand-compiled scanner.
var knownPatterns = map[string]spanFinder{
	gpt2Pattern:  gpt2Splitter,
	qwen2Pattern: qwen2Splitter,
}

// scanFinder finds matches with a function returning the end of the match starting at i (every
// position of these patterns starts a match, so matches tile the string).
type scanFinder func(s string, i int) int

func (f scanFinder) find(s string) ([]span, error) {
	out := make([]span, 0, len(s)/3+1)
	for i := 0; i < len(s); {
		j := f(s, i)
		out = append(out, span{i, j})
		i = j
	}
	return out, nil
}

// Character classes as the patterns use them: \s is Unicode White_Space (Go's unicode.IsSpace, which
// is also Oniguruma's and regexp2's \s), \p{L} letters, \p{N} numbers.
const (
	classSpace = iota
	classLetter
	classNumber
	classOther
)

func classOf(r rune) int {
	switch {
	case r < utf8.RuneSelf:
		return asciiClass[r]
	case unicode.IsSpace(r):
		return classSpace
	case unicode.IsLetter(r):
		return classLetter
	case unicode.IsNumber(r):
		return classNumber
	}
	return classOther
}

var asciiClass [utf8.RuneSelf]int

func init() {
	for r := rune(0); r < utf8.RuneSelf; r++ {
		switch {
		case unicode.IsSpace(r):
			asciiClass[r] = classSpace
		case unicode.IsLetter(r):
			asciiClass[r] = classLetter
		case unicode.IsNumber(r):
			asciiClass[r] = classNumber
		default:
			asciiClass[r] = classOther
		}
	}
}

// at returns the rune at byte offset i, its size and its class; ok is false at the end.
func at(s string, i int) (r rune, size, class int, ok bool) {
	if i >= len(s) {
		return 0, 0, 0, false
	}
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1, asciiClass[c], true
	}
	r, size = utf8.DecodeRuneInString(s[i:])
	return r, size, classOf(r), true
}

// runOf returns the end of the run of class c starting at i.
func runOf(s string, i, c int) int {
	for {
		_, size, class, ok := at(s, i)
		if !ok || class != c {
			return i
		}
		i += size
	}
}

// contraction returns the length of 's 't 're 've 'm 'll 'd at s[i:] (with foldCase, any case and
// the long s U+017F for s, as (?i) matches under simple case folding), or 0.
func contraction(s string, i int, foldCase bool) int {
	if i >= len(s) || s[i] != '\'' {
		return 0
	}
	r1, n1 := utf8.DecodeRuneInString(s[i+1:])
	r2, n2 := utf8.DecodeRuneInString(s[i+1+n1:])
	if foldCase {
		r1, r2 = foldASCII(r1), foldASCII(r2)
	}
	switch r1 {
	case 's', 't', 'm', 'd':
		return 1 + n1
	case 'r', 'v':
		if r2 == 'e' {
			return 1 + n1 + n2
		}
	case 'l':
		if r2 == 'l' {
			return 1 + n1 + n2
		}
	}
	return 0
}

// foldASCII maps the runes that simple-case-fold to the letters of the contractions onto them.
func foldASCII(r rune) rune {
	switch {
	case r >= 'A' && r <= 'Z':
		return r + ('a' - 'A')
	case r == 0x17F: // ſ folds to s
		return 's'
	}
	return r
}

// spaceRunEnd handles `\s+(?!\S)|\s+` at a whitespace position i: the run, minus its last character
// when a non-space follows and the run is longer than one character.
func spaceRunEnd(s string, i int) int {
	k := runOf(s, i, classSpace)
	if k == len(s) {
		return k
	}
	_, last := utf8.DecodeLastRuneInString(s[:k])
	if k-last > i {
		return k - last
	}
	return k
}

// gpt2Next: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
func gpt2Next(s string, i int) int {
	if n := contraction(s, i, false); n > 0 {
		return i + n
	}
	j := i
	if s[i] == ' ' {
		j = i + 1
	}
	if _, _, c, ok := at(s, j); ok && c != classSpace {
		return runOf(s, j, c)
	}
	// s[i] is whitespace (a lone ' ' before whitespace or the end included).
	return spaceRunEnd(s, i)
}

// qwen2Next: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
func qwen2Next(s string, i int) int {
	if n := contraction(s, i, true); n > 0 {
		return i + n
	}
	r, size, c, _ := at(s, i)
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if c == classLetter {
		return runOf(s, i, classLetter)
	}
	if c != classNumber && r != '\r' && r != '\n' {
		if _, _, c2, ok := at(s, i+size); ok && c2 == classLetter {
			return runOf(s, i+size, classLetter)
		}
	}
	// \p{N}
	if c == classNumber {
		return i + size
	}
	// ' ?[^\s\p{L}\p{N}]+[\r\n]*'
	j := i
	if r == ' ' {
		j = i + size
	}
	if _, _, c2, ok := at(s, j); ok && c2 == classOther {
		k := runOf(s, j, classOther)
		for k < len(s) && (s[k] == '\r' || s[k] == '\n') {
			k++
		}
		return k
	}
	// s[i] is whitespace. \s*[\r\n]+ ends after the run's last newline, if it has one.
	k := runOf(s, i, classSpace)
	for p := k - 1; p >= i; p-- {
		if s[p] == '\r' || s[p] == '\n' {
			return p + 1
		}
	}
	return spaceRunEnd(s, i)
}
