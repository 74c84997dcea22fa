package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// decoder turns the token strings of a Decode back into text pieces; the pieces are then joined.
type decoder interface {
	decodeChain(tokens []string) []string
}

func parseDecoder(m json.RawMessage) (decoder, error) {
	typ, err := componentType(m)
	if err != nil {
		return nil, err
	}
	switch typ {
	case "ByteLevel":
		return byteLevelDecoder{}, nil
	case "Replace":
		r, err := parseReplace(m)
		if err != nil {
			return nil, fmt.Errorf("Replace: %w", err)
		}
		if r.re != nil {
			// A regex Replace decoder would be the only fallible decoder; none of the supported
			// tokenizers uses one.
			return nil, errors.New("Replace: a Regex pattern in a decoder is not supported (String only)")
		}
		return replaceDecoder{r}, nil
	case "ByteFallback":
		return byteFallbackDecoder{}, nil
	case "Fuse":
		return fuseDecoder{}, nil
	case "Strip":
		var c struct {
			Content *string `json:"content"`
			Start   int     `json:"start"`
			Stop    int     `json:"stop"`
		}
		if err := json.Unmarshal(m, &c); err != nil {
			return nil, fmt.Errorf("Strip: %w", err)
		}
		if c.Content == nil || utf8.RuneCountInString(*c.Content) != 1 {
			return nil, errors.New("Strip: content must be one character")
		}
		if c.Start < 0 || c.Stop < 0 {
			return nil, fmt.Errorf("Strip: negative start %d or stop %d", c.Start, c.Stop)
		}
		r, _ := utf8.DecodeRuneInString(*c.Content)
		return stripDecoder{content: r, start: c.Start, stop: c.Stop}, nil
	case "Sequence":
		var c struct {
			Decoders []json.RawMessage `json:"decoders"`
		}
		if err := json.Unmarshal(m, &c); err != nil {
			return nil, fmt.Errorf("Sequence: %w", err)
		}
		seq := make(decoderSequence, 0, len(c.Decoders))
		for i, sub := range c.Decoders {
			d, err := parseDecoder(sub)
			if err != nil {
				return nil, fmt.Errorf("Sequence[%d]: %w", i, err)
			}
			seq = append(seq, d)
		}
		return seq, nil
	case "":
		return nil, errors.New("component without a type")
	}
	return nil, fmt.Errorf("decoder %q is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Sequence)", typ)
}

type decoderSequence []decoder

func (q decoderSequence) decodeChain(tokens []string) []string {
	for _, d := range q {
		tokens = d.decodeChain(tokens)
	}
	return tokens
}

// byteLevelDecoder maps the stand-in characters back to bytes and reads them as UTF-8 (lossily).
type byteLevelDecoder struct{}

func (byteLevelDecoder) decodeChain(tokens []string) []string {
	var buf []byte
	for _, t := range tokens {
		buf = byteLevelDecodeToken(buf, t)
	}
	return []string{lossyUTF8(buf)}
}

type replaceDecoder struct{ r *replace }

func (d replaceDecoder) decodeChain(tokens []string) []string {
	out := make([]string, len(tokens))
	for i, t := range tokens {
		out[i] = strings.ReplaceAll(t, d.r.literal, d.r.content)
	}
	return out
}

// byteFallbackDecoder turns runs of "<0xNN>" tokens back into text; a run that is not valid UTF-8
// becomes one U+FFFD per byte, as the library does.
type byteFallbackDecoder struct{}

func byteToken(t string) (byte, bool) {
	if len(t) != 6 || !strings.HasPrefix(t, "<0x") || t[5] != '>' {
		return 0, false
	}
	// Rust's u8::from_str_radix, which also takes a leading '+'.
	digits := t[3:5]
	if digits[0] == '+' {
		digits = digits[1:]
	}
	var v byte
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		v = v*16 + d
	}
	return v, true
}

func (byteFallbackDecoder) decodeChain(tokens []string) []string {
	out := make([]string, 0, len(tokens))
	var run []byte
	flush := func() {
		if len(run) == 0 {
			return
		}
		if utf8.Valid(run) {
			out = append(out, string(run))
		} else {
			for range run {
				out = append(out, "\uFFFD")
			}
		}
		run = run[:0]
	}
	for _, t := range tokens {
		if b, ok := byteToken(t); ok {
			run = append(run, b)
			continue
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

type fuseDecoder struct{}

func (fuseDecoder) decodeChain(tokens []string) []string {
	return []string{strings.Join(tokens, "")}
}

// stripDecoder removes up to start leading and stop trailing copies of a character from each token.
type stripDecoder struct {
	content     rune
	start, stop int
}

func (d stripDecoder) decodeChain(tokens []string) []string {
	out := make([]string, len(tokens))
	for i, t := range tokens {
		lo := 0
		for n := 0; n < d.start && lo < len(t); n++ {
			r, size := utf8.DecodeRuneInString(t[lo:])
			if r != d.content {
				break
			}
			lo += size
		}
		hi := len(t)
		for n := 0; n < d.stop && hi > lo; n++ {
			r, size := utf8.DecodeLastRuneInString(t[lo:hi])
			if r != d.content {
				break
			}
			hi -= size
		}
		out[i] = t[lo:hi]
	}
	return out
}
