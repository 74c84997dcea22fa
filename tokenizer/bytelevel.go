package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// The GPT-2 byte-to-character table: printable Latin-1 bytes stand for themselves, the other 68
// bytes (controls, space, DEL, NBSP, soft hyphen...) map to U+0100 onwards in byte order, so every
// byte string becomes printable text (a space becomes "Ġ", a newline "Ċ").
var (
	byteToRune [256]rune
	// runeToByte inverts byteToRune: runeToByte[r] is the byte plus one, 0 where r stands for none.
	runeToByte [256 + 68]int16
	// byteToString holds string(byteToRune[b]) to avoid re-encoding in the hot path.
	byteToString [256]string
)

func init() {
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			byteToRune[b] = rune(b)
		} else {
			byteToRune[b] = rune(256 + n)
			n++
		}
		runeToByte[byteToRune[b]] = int16(b) + 1
		byteToString[b] = string(byteToRune[b])
	}
}

// byteLevelEncode maps every byte of s to its stand-in character.
func byteLevelEncode(s string) string {
	return string(appendByteLevel(make([]byte, 0, 2*len(s)), s))
}

// appendByteLevel appends the stand-in characters of the bytes of s to dst.
func appendByteLevel(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		dst = append(dst, byteToString[s[i]]...)
	}
	return dst
}

// byteLevelDecodeToken turns a token back into bytes. A token with a character outside the table
// (an added token such as "    ") is kept as its own UTF-8 bytes, as the library does.
func byteLevelDecodeToken(dst []byte, tok string) []byte {
	start := len(dst)
	for _, r := range tok {
		if r >= rune(len(runeToByte)) || runeToByte[r] == 0 {
			return append(dst[:start], tok...)
		}
		dst = append(dst, byte(runeToByte[r]-1))
	}
	return dst
}

// lossyUTF8 converts bytes to a string like Rust's String::from_utf8_lossy: each maximal
// ill-formed subsequence (Unicode's "maximal subpart" rule) becomes one U+FFFD. Go's
// strings.ToValidUTF8 differs: it merges a whole run of bad bytes into one replacement.
func lossyUTF8(p []byte) string {
	if utf8.Valid(p) {
		return string(p)
	}
	var b strings.Builder
	b.Grow(len(p) + 8)
	for i := 0; i < len(p); {
		if p[i] < utf8.RuneSelf {
			b.WriteByte(p[i])
			i++
			continue
		}
		r, size := utf8.DecodeRune(p[i:])
		if r != utf8.RuneError || size > 1 {
			b.Write(p[i : i+size])
			i += size
			continue
		}
		b.WriteRune(utf8.RuneError)
		i += maximalSubpart(p[i:])
	}
	return b.String()
}

// maximalSubpart is the length (at least 1) of the longest prefix of p that starts a well-formed
// UTF-8 sequence, for p that does not begin with a complete one (Unicode Table 3-7).
func maximalSubpart(p []byte) int {
	b0 := p[0]
	var need int
	lo, hi := byte(0x80), byte(0xBF) // allowed range of the second byte
	switch {
	case b0 >= 0xC2 && b0 <= 0xDF:
		need = 2
	case b0 == 0xE0:
		need, lo = 3, 0xA0
	case b0 >= 0xE1 && b0 <= 0xEC, b0 == 0xEE, b0 == 0xEF:
		need = 3
	case b0 == 0xED:
		need, hi = 3, 0x9F
	case b0 == 0xF0:
		need, lo = 4, 0x90
	case b0 >= 0xF1 && b0 <= 0xF3:
		need = 4
	case b0 == 0xF4:
		need, hi = 4, 0x8F
	default:
		return 1
	}
	n := 1
	for n < need && n < len(p) {
		c := p[n]
		if n == 1 {
			if c < lo || c > hi {
				break
			}
		} else if c < 0x80 || c > 0xBF {
			break
		}
		n++
	}
	return n
}
