// Package jpegdec decodes JPEG files to the pixels Pillow gets from them. Pillow decodes with
// libjpeg-turbo at its default settings, and this decoder follows that decompression step by step:
// baseline, extended-sequential and progressive Huffman-coded 8-bit files; the accurate integer IDCT
// (JDCT_ISLOW); "fancy" triangular upsampling of subsampled chroma (h2v1, h1v2, h2v2; plain replication
// for other integral factors); libjpeg's fixed-point YCbCr→RGB and YCCK→CMYK; libjpeg's handling of
// corrupt data (zero bits past an unexpected marker, then uniform grey to the next restart).
//
// The colour space is chosen as libjpeg chooses it (JFIF and Adobe markers, component ids), and the
// result is what Pillow holds: "L" for one component, "RGB" for three, and for four "CMYK" with every
// sample inverted, since Pillow always reads four-component JPEGs as Adobe-inverted ("CMYK;I").
//
// Not supported (Decode returns an *UnsupportedError): arithmetic coding, lossless and hierarchical
// files, 12- and 16-bit samples, 2 or more than 4 components, DNL-defined heights, scans that use a
// Huffman table the file never defines (libjpeg would substitute the standard tables), fractional
// sampling ratios, and restart markers out of sequence (libjpeg would resynchronise).
//
// Known difference: a progressive file whose scans never complete the first AC coefficients is
// post-processed by libjpeg with interblock smoothing; this decoder leaves such blocks as coded.
package jpegdec

import (
	"errors"
	"fmt"
)

// Image is a decoded JPEG as Pillow holds it.
type Image struct {
	Width, Height int
	// Channels is 1 (grey, Pillow mode "L"), 3 (RGB) or 4 (CMYK as Pillow reads it: libjpeg's output
	// inverted, so that 0 means no ink).
	Channels int
	Pix      []uint8 // Height rows of Width·Channels samples

	EXIF []byte // first APP1 "Exif\0" payload after its 6-byte header (the TIFF structure), nil if none
	XMP  []byte // first APP1 XMP packet, nil if none

	// Corrupt is set when entropy-coded data stopped short at a marker: libjpeg then warns and fills
	// with zero bits and uniform grey, as this decoder did.
	Corrupt bool
	// Unsmoothed is set for a progressive file whose first AC coefficients were left incomplete:
	// libjpeg smooths such blocks with their neighbours and this decoder does not, so its pixels may
	// differ from Pillow's.
	Unsmoothed bool
}

// FormatError reports a file that is not valid JPEG.
type FormatError string

func (e FormatError) Error() string { return "invalid JPEG: " + string(e) }

// UnsupportedError reports a valid JPEG feature that this decoder does not implement.
type UnsupportedError string

func (e UnsupportedError) Error() string { return "unsupported JPEG: " + string(e) }

// ErrTruncated reports a file that ends before its image data does.
var ErrTruncated = errors.New("truncated JPEG: the file ends before the image data does")

// Markers (T.81 Table B.1).
const (
	mSOF0  = 0xc0
	mSOF1  = 0xc1
	mSOF2  = 0xc2
	mDHT   = 0xc4
	mRST0  = 0xd0
	mRST7  = 0xd7
	mSOI   = 0xd8
	mEOI   = 0xd9
	mSOS   = 0xda
	mDQT   = 0xdb
	mDNL   = 0xdc
	mDRI   = 0xdd
	mAPP0  = 0xe0
	mAPP1  = 0xe1
	mAPP14 = 0xee
	mAPP15 = 0xef
	mCOM   = 0xfe
	mTEM   = 0x01
)

// natural[k] is the natural-order (row-major) index of the k-th coefficient in zigzag order.
var natural = func() (z [64 + 16]int) {
	i := 0
	for s := 0; s < 15; s++ { // anti-diagonals r + c = s
		if s%2 == 0 { // upward: row decreasing
			for r := min(s, 7); r >= max(0, s-7); r-- {
				z[i] = 8*r + (s - r)
				i++
			}
		} else {
			for r := max(0, s-7); r <= min(s, 7); r++ {
				z[i] = 8*r + (s - r)
				i++
			}
		}
	}
	// Past the end (Se up to 63 plus a run of up to 15 from a corrupt stream): harmless slot 63.
	for ; i < len(z); i++ {
		z[i] = 63
	}
	return z
}()

type component struct {
	id        uint8
	h, v      int // sampling factors
	tq        int // quantisation table selector
	quant     *[64]uint16
	dcTab     int
	acTab     int
	pred      int32 // DC predictor
	dw, dh    int   // downsampled size in samples (ceil(W·h/hmax), ceil(H·v/vmax))
	bw, bh    int   // blocks needed: ceil(dw/8), ceil(dh/8)
	bwa, bha  int   // blocks allocated: a whole number of MCUs
	plane     []uint8
	stride    int
	coefs     [][64]int16 // progressive only: bwa·bha blocks
	coefBits  [64]int     // progressive: lowest known bit of each coefficient, −1 unknown
	scanned   bool
	quantSeen bool
}

type decoder struct {
	data        []byte
	width       int
	height      int
	progressive bool
	sof         bool
	comps       []*component
	hmax, vmax  int
	mcusX       int
	mcusY       int
	quant       [4]*[64]uint16
	dc, ac      [4]*huffTable
	restart     int // restart interval in MCUs, 0 = none
	jfif        bool
	adobe       bool
	transform   int
	scans       int
	fullScan    bool // some scan was interleaved over every component and decoded all of its MCUs
	eobrun      int
	corrupt     bool
	exif, xmp   []byte
	maxPixels   int64
}

// LimitError reports a picture with more pixels than the caller allows.
type LimitError struct {
	Width, Height int
	Max           int64
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%d×%d pixels is more than the %d allowed", e.Width, e.Height, e.Max)
}

// Decode decodes a whole JPEG file held in memory. Pictures with more than maxPixels pixels are refused
// (with a *LimitError) before any pixel memory is allocated.
func Decode(data []byte, maxPixels int64) (*Image, error) {
	d := &decoder{data: data, maxPixels: maxPixels}
	if err := d.run(); err != nil {
		return nil, err
	}
	return d.output()
}

// run walks the marker segments and decodes every scan.
func (d *decoder) run() error {
	if len(d.data) < 2 || d.data[0] != 0xff || d.data[1] != mSOI {
		return FormatError("missing SOI marker")
	}
	pos := 2
	for {
		code, at, ok := nextMarker(d.data, pos)
		if !ok {
			return d.endWithoutEOI()
		}
		pos = at + 1
		switch {
		case code == mEOI:
			if !d.sof || d.scans == 0 {
				return FormatError("no image data before EOI")
			}
			return nil
		case code == mSOI:
			return FormatError("second SOI marker")
		case code >= mRST0 && code <= mRST7, code == mTEM:
			continue // stray restart markers are ignored, as libjpeg ignores them
		}
		seg, next, err := segment(d.data, pos, code)
		if err != nil {
			return err
		}
		pos = next
		switch {
		case code == mSOF0 || code == mSOF1 || code == mSOF2:
			if d.sof {
				return FormatError("more than one SOF marker")
			}
			if err := d.parseSOF(seg, code == mSOF2); err != nil {
				return err
			}
		case code >= 0xc3 && code <= 0xcf && code != mDHT && code != 0xc8 && code != 0xcc:
			return UnsupportedError(sofName(code))
		case code == 0xcc:
			return UnsupportedError("arithmetic coding conditioning (DAC marker)")
		case code == mDHT:
			if err := d.parseDHT(seg); err != nil {
				return err
			}
		case code == mDQT:
			if err := d.parseDQT(seg); err != nil {
				return err
			}
		case code == mDRI:
			if len(seg) != 2 {
				return FormatError("DRI segment length")
			}
			d.restart = int(seg[0])<<8 | int(seg[1])
		case code == mDNL:
			return UnsupportedError("DNL marker (height defined after the first scan)")
		case code == mSOS:
			if !d.sof {
				return FormatError("SOS before SOF")
			}
			end, err := d.parseAndDecodeScan(seg, pos)
			if err != nil {
				return err
			}
			pos = end
		case code >= mAPP0 && code <= mAPP15:
			d.parseAPP(code, seg)
		case code == mCOM, code == 0xc8, code >= 0xf0 && code <= 0xfd:
			// COM, JPG and JPGn extensions: skipped.
		default:
			return FormatError(fmt.Sprintf("unknown marker 0xFF%02X", code))
		}
	}
}

// endWithoutEOI decides what a file without EOI is worth. Pillow keeps the image when every scan line
// was produced, which for a single interleaved sequential scan is when its last MCU was decoded;
// files made of several scans are only output after the whole input is absorbed.
func (d *decoder) endWithoutEOI() error {
	if d.sof && !d.progressive && d.scans == 1 && d.fullScan {
		return nil
	}
	return ErrTruncated
}

// nextMarker finds the next marker at or after pos as libjpeg's next_marker does: bytes other than
// 0xFF are skipped (libjpeg warns about them), fill bytes 0xFF are skipped, FF 00 is not a marker.
// It returns the marker code and the index of the code byte.
func nextMarker(data []byte, pos int) (code byte, at int, ok bool) {
	for {
		for pos < len(data) && data[pos] != 0xff {
			pos++
		}
		for pos < len(data) && data[pos] == 0xff {
			pos++
		}
		if pos >= len(data) {
			return 0, 0, false
		}
		if data[pos] != 0 {
			return data[pos], pos, true
		}
		pos++
	}
}

// segment returns the payload of the marker segment whose length field starts at pos.
func segment(data []byte, pos int, code byte) (payload []byte, next int, err error) {
	if pos+2 > len(data) {
		return nil, 0, ErrTruncated
	}
	n := int(data[pos])<<8 | int(data[pos+1])
	if n < 2 {
		return nil, 0, FormatError(fmt.Sprintf("marker 0xFF%02X: segment length %d", code, n))
	}
	if pos+n > len(data) {
		return nil, 0, ErrTruncated
	}
	return data[pos+2 : pos+n], pos + n, nil
}

func sofName(code byte) string {
	switch code {
	case 0xc3:
		return "lossless (SOF3)"
	case 0xc5, 0xc6, 0xc7:
		return fmt.Sprintf("hierarchical (SOF%d)", code-0xc0)
	case 0xc9, 0xca:
		return fmt.Sprintf("arithmetic coding (SOF%d)", code-0xc0)
	case 0xcb:
		return "arithmetic lossless (SOF11)"
	case 0xcd, 0xce, 0xcf:
		return fmt.Sprintf("hierarchical arithmetic coding (SOF%d)", code-0xc0)
	}
	return fmt.Sprintf("marker 0xFF%02X", code)
}

func (d *decoder) parseAPP(code byte, seg []byte) {
	switch code {
	case mAPP0:
		// libjpeg recognises JFIF only in an APP0 of at least 14 data bytes.
		if len(seg) >= 14 && string(seg[:5]) == "JFIF\x00" {
			d.jfif = true
		}
	case mAPP1:
		// Pillow keeps the first APP1 starting "Exif\0" and drops its 6-byte "Exif\0\0" header.
		const exifID, xmpID = "Exif\x00", "http://ns.adobe.com/xap/1.0/\x00"
		if d.exif == nil && len(seg) >= 6 && string(seg[:len(exifID)]) == exifID {
			d.exif = seg[6:]
		}
		if d.xmp == nil && len(seg) >= len(xmpID) && string(seg[:len(xmpID)]) == xmpID {
			d.xmp = seg[len(xmpID):]
		}
	case mAPP14:
		if len(seg) >= 12 && string(seg[:5]) == "Adobe" {
			d.adobe = true
			d.transform = int(seg[11])
		}
	}
}

func (d *decoder) parseSOF(seg []byte, progressive bool) error {
	if len(seg) < 6 {
		return FormatError("SOF segment too short")
	}
	if seg[0] != 8 {
		return UnsupportedError(fmt.Sprintf("%d-bit samples", seg[0]))
	}
	d.height = int(seg[1])<<8 | int(seg[2])
	d.width = int(seg[3])<<8 | int(seg[4])
	n := int(seg[5])
	if d.height == 0 {
		return UnsupportedError("DNL marker (height defined after the first scan)")
	}
	if d.width == 0 {
		return FormatError("zero image width")
	}
	if int64(d.width)*int64(d.height) > d.maxPixels {
		return &LimitError{Width: d.width, Height: d.height, Max: d.maxPixels}
	}
	if n != 1 && n != 3 && n != 4 {
		return UnsupportedError(fmt.Sprintf("%d colour components", n))
	}
	if len(seg) != 6+3*n {
		return FormatError("SOF segment length")
	}
	d.progressive = progressive
	d.hmax, d.vmax = 1, 1
	for i := 0; i < n; i++ {
		c := &component{id: seg[6+3*i], h: int(seg[7+3*i] >> 4), v: int(seg[7+3*i] & 15), tq: int(seg[8+3*i])}
		if c.h < 1 || c.h > 4 || c.v < 1 || c.v > 4 {
			return FormatError(fmt.Sprintf("component %d: sampling factors %d×%d", c.id, c.h, c.v))
		}
		if c.tq > 3 {
			return FormatError(fmt.Sprintf("component %d: quantisation table %d", c.id, c.tq))
		}
		d.hmax, d.vmax = max(d.hmax, c.h), max(d.vmax, c.v)
		d.comps = append(d.comps, c)
	}
	d.mcusX = ceilDiv(d.width, 8*d.hmax)
	d.mcusY = ceilDiv(d.height, 8*d.vmax)
	for _, c := range d.comps {
		if d.hmax%c.h != 0 || d.vmax%c.v != 0 {
			return UnsupportedError(fmt.Sprintf("component %d: fractional sampling ratio %d/%d × %d/%d", c.id, d.hmax, c.h, d.vmax, c.v))
		}
		c.dw = ceilDiv(d.width*c.h, d.hmax)
		c.dh = ceilDiv(d.height*c.v, d.vmax)
		c.bw, c.bh = ceilDiv(c.dw, 8), ceilDiv(c.dh, 8)
		c.bwa, c.bha = d.mcusX*c.h, d.mcusY*c.v
		c.stride = 8 * c.bwa
		c.plane = make([]uint8, c.stride*8*c.bha)
		if progressive {
			c.coefs = make([][64]int16, c.bwa*c.bha)
			for k := range c.coefBits {
				c.coefBits[k] = -1
			}
		}
	}
	d.sof = true
	return nil
}

func (d *decoder) parseDHT(seg []byte) error {
	for len(seg) > 0 {
		if len(seg) < 17 {
			return FormatError("DHT segment too short")
		}
		class, id := seg[0]>>4, seg[0]&15
		if class > 1 || id > 3 {
			return FormatError(fmt.Sprintf("DHT table class %d id %d", class, id))
		}
		var counts [16]uint8
		total := 0
		for i := range counts {
			counts[i] = seg[1+i]
			total += int(counts[i])
		}
		if total > 256 || 17+total > len(seg) {
			return FormatError("bad Huffman table: too many symbols")
		}
		vals := append([]uint8(nil), seg[17:17+total]...)
		t, err := newHuffTable(counts, vals, class == 0)
		if err != nil {
			return FormatError(err.Error())
		}
		if class == 0 {
			d.dc[id] = t
		} else {
			d.ac[id] = t
		}
		seg = seg[17+total:]
	}
	return nil
}

func (d *decoder) parseDQT(seg []byte) error {
	for len(seg) > 0 {
		prec, id := seg[0]>>4, seg[0]&15
		if prec > 1 || id > 3 {
			return FormatError(fmt.Sprintf("DQT precision %d id %d", prec, id))
		}
		size := 64 * (1 + int(prec))
		if len(seg) < 1+size {
			return FormatError("DQT segment too short")
		}
		q := new([64]uint16)
		for k := 0; k < 64; k++ {
			if prec == 0 {
				q[natural[k]] = uint16(seg[1+k])
			} else {
				q[natural[k]] = uint16(seg[1+2*k])<<8 | uint16(seg[2+2*k])
			}
		}
		d.quant[id] = q
		seg = seg[1+size:]
	}
	return nil
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
