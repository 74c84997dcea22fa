package jpegdec

import "errors"

// lookBits is the width of the Huffman fast-path lookup table, as in libjpeg (HUFF_LOOKAHEAD).
const lookBits = 9

// huffTable is a decoding table built from a DHT segment (ITU T.81 Annex C and F.2.2.3).
type huffTable struct {
	fast    [1 << lookBits]uint16 // code length << 8 | symbol for codes of ≤ lookBits bits; 0: slow path
	maxcode [18]int32             // largest code of each length, −1 when none; [17] is a sentinel
	valoff  [17]int32             // symbol index of the first code of each length, minus that code
	vals    []uint8
}

// newHuffTable builds the table of counts (codes per length 1..16) and symbols, rejecting tables
// whose codes do not fit their lengths (libjpeg's JERR_BAD_HUFF_TABLE checks). DC symbols above 15 are
// rejected too, as libjpeg does.
func newHuffTable(counts [16]uint8, vals []uint8, isDC bool) (*huffTable, error) {
	t := &huffTable{vals: vals}
	code := int32(0)
	k := 0
	for l := 1; l <= 16; l++ {
		n := int(counts[l-1])
		if n == 0 {
			t.maxcode[l] = -1
		} else {
			t.valoff[l] = int32(k) - code
			code += int32(n)
			k += n
			t.maxcode[l] = code - 1
			if code > 1<<l {
				return nil, errors.New("bad Huffman table: more codes than the lengths allow")
			}
		}
		code <<= 1
	}
	t.maxcode[17] = 0x7fffffff
	if k != len(vals) {
		return nil, errors.New("bad Huffman table: symbol count does not match the code counts")
	}
	if isDC {
		for _, v := range vals {
			if v > 15 {
				return nil, errors.New("bad Huffman table: DC symbol above 15")
			}
		}
	}
	// Fast table: every lookBits-bit prefix that starts with a code of length ≤ lookBits.
	code = 0
	k = 0
	for l := 1; l <= lookBits; l++ {
		for i := 0; i < int(counts[l-1]); i++ {
			shift := lookBits - l
			for j := 0; j < 1<<shift; j++ {
				t.fast[int(code)<<shift|j] = uint16(l)<<8 | uint16(vals[k])
			}
			code++
			k++
		}
		code <<= 1
	}
	return t, nil
}

// errTruncated reports entropy-coded data that ends (end of file, no marker) before the scan does.
var errTruncated = ErrTruncated

// bitReader reads the entropy-coded segment of a scan, MSB first, undoing 0xFF00 byte stuffing. At a
// marker it supplies zero bits as libjpeg does (the data is corrupt, the decoder goes on and records
// it); at the end of the input it reports errTruncated, which is what Pillow does for a cut-off file.
type bitReader struct {
	data []byte
	pos  int    // next byte to read
	acc  uint64 // bits, left-aligned
	n    int    // valid bits in acc

	marker       int  // index of the marker code byte when a marker stopped the reader, else −1
	atEnd        bool // the input ended without a marker
	insufficient bool // zero bits were supplied past a marker (libjpeg's insufficient_data)
}

func newBitReader(data []byte, pos int) bitReader {
	return bitReader{data: data, pos: pos, marker: -1}
}

// fill loads whole bytes until at least 57 bits are held or the segment ends.
func (b *bitReader) fill() {
	for b.n <= 56 {
		if b.marker >= 0 || b.atEnd {
			return
		}
		if b.pos >= len(b.data) {
			b.atEnd = true
			return
		}
		c := b.data[b.pos]
		if c == 0xff {
			// Skip fill bytes; FF 00 is a stuffed FF, FF xx a marker.
			p := b.pos + 1
			for p < len(b.data) && b.data[p] == 0xff {
				p++
			}
			if p >= len(b.data) {
				b.atEnd = true
				return
			}
			if b.data[p] != 0 {
				b.marker = p
				return
			}
			b.pos = p + 1
		} else {
			b.pos++
		}
		b.acc |= uint64(c) << (56 - b.n)
		b.n += 8
	}
}

// refill makes at least k (≤ 32) bits available, padding with zeros past a marker.
func (b *bitReader) refill(k int) error {
	b.fill()
	if b.n >= k {
		return nil
	}
	if b.atEnd {
		return errTruncated
	}
	b.insufficient = true
	b.n = 64 // zeros
	return nil
}

// bits reads k bits (0 ≤ k ≤ 16) as an unsigned number.
func (b *bitReader) bits(k int) (int32, error) {
	if b.n < k {
		if err := b.refill(k); err != nil {
			return 0, err
		}
	}
	v := int32(b.acc >> (64 - k)) // a shift by 64 gives 0 for k = 0
	b.acc <<= k
	b.n -= k
	return v, nil
}

// bit reads one bit.
func (b *bitReader) bit() (bool, error) {
	v, err := b.bits(1)
	return v != 0, err
}

// decode reads one Huffman-coded symbol: codes of up to lookBits bits through the lookup table,
// longer ones (and codes near a marker or the end of the data) bit by bit.
func (b *bitReader) decode(t *huffTable) (uint8, error) {
	if b.n < 16 {
		b.fill()
	}
	if b.n >= lookBits {
		if e := t.fast[b.acc>>(64-lookBits)]; e != 0 {
			l := int(e >> 8)
			b.acc <<= l
			b.n -= l
			return uint8(e), nil
		}
	}
	return b.decodeSlow(t)
}

// decodeSlow walks the code lengths one bit at a time, padding with zero bits past a marker as
// libjpeg does. A bit string matching no code yields symbol 0, as libjpeg does after its "corrupt
// data" warning.
func (b *bitReader) decodeSlow(t *huffTable) (uint8, error) {
	code := int32(0)
	for l := 1; l <= 16; l++ {
		bit, err := b.bits(1)
		if err != nil {
			return 0, err
		}
		code = code<<1 | bit
		if code <= t.maxcode[l] {
			return t.vals[t.valoff[l]+code], nil
		}
	}
	return 0, nil
}

// receiveExtend reads an s-bit magnitude (1 ≤ s ≤ 15) and sign-extends it (T.81 F.2.2.1 EXTEND).
func (b *bitReader) receiveExtend(s int) (int32, error) {
	if b.n < s {
		if err := b.refill(s); err != nil {
			return 0, err
		}
	}
	v := int32(b.acc >> (64 - s))
	b.acc <<= s
	b.n -= s
	if v < 1<<(s-1) {
		v += -1<<s + 1
	}
	return v, nil
}

// reset throws away buffered bits (before a restart marker).
func (b *bitReader) reset() {
	b.acc, b.n = 0, 0
}
