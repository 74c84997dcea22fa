package images

import (
	"encoding/binary"
	"image"
	"testing"
)

// TestOrientHand turns a 3×2 picture
//
//	a b c
//	d e f
//
// by each EXIF orientation; the expected layouts are written out by hand from the tag's definition
// (PIL's exif_transpose methods).
func TestOrientHand(t *testing.T) {
	src := NewRGB(image.Rect(0, 0, 3, 2))
	for i, v := range "abcdef" {
		src.Pix[3*i], src.Pix[3*i+1], src.Pix[3*i+2] = uint8(v), uint8(v), uint8(v)
	}
	for _, tc := range []struct {
		o    Orientation
		w, h int
		want string
	}{
		{0, 3, 2, "abcdef"},
		{1, 3, 2, "abcdef"},
		{2, 3, 2, "cbafed"}, // mirrored left-right
		{3, 3, 2, "fedcba"}, // rotated 180°
		{4, 3, 2, "defabc"}, // flipped top-bottom
		{5, 2, 3, "adbecf"}, // transposed
		{6, 2, 3, "daebfc"}, // rotated 90° clockwise
		{7, 2, 3, "fcebda"}, // transversed
		{8, 2, 3, "cfbead"}, // rotated 90° counter-clockwise
		{9, 3, 2, "abcdef"}, // invalid: unchanged
	} {
		got := Orient(src, tc.o)
		if got.Rect.Dx() != tc.w || got.Rect.Dy() != tc.h {
			t.Errorf("orientation %d: %v, want %d×%d", tc.o, got.Rect.Size(), tc.w, tc.h)
			continue
		}
		s := make([]byte, 0, 6)
		for i := 0; i < 6; i++ {
			s = append(s, got.Pix[3*i])
		}
		if string(s) != tc.want {
			t.Errorf("orientation %d (%v): %q, want %q", tc.o, tc.o, s, tc.want)
		}
	}
}

// tiff builds a minimal TIFF structure whose IFD0 holds the given entries (tag, type, value).
func tiff(bo binary.ByteOrder, entries ...[3]uint32) []byte {
	order := bo.(binary.AppendByteOrder)
	b := make([]byte, 8, 64)
	if bo == binary.LittleEndian {
		copy(b, "II")
	} else {
		copy(b, "MM")
	}
	bo.PutUint16(b[2:], 42)
	bo.PutUint32(b[4:], 8)
	b = order.AppendUint16(b, uint16(len(entries)))
	for _, e := range entries {
		b = order.AppendUint16(b, uint16(e[0]))
		b = order.AppendUint16(b, uint16(e[1]))
		b = order.AppendUint32(b, 1)
		var v [4]byte
		switch e[1] {
		case 3:
			bo.PutUint16(v[:], uint16(e[2]))
		case 4:
			bo.PutUint32(v[:], e[2])
		default:
			v[0] = byte(e[2])
		}
		b = append(b, v[:]...)
	}
	return order.AppendUint32(b, 0) // no next IFD
}

func TestTIFFOrientation(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want Orientation
	}{
		{"little-endian SHORT", tiff(binary.LittleEndian, [3]uint32{0x010f, 2, 'x'}, [3]uint32{0x0112, 3, 6}), 6},
		{"big-endian SHORT", tiff(binary.BigEndian, [3]uint32{0x0112, 3, 8}), 8},
		{"LONG", tiff(binary.BigEndian, [3]uint32{0x0112, 4, 3}), 3},
		{"no orientation", tiff(binary.LittleEndian, [3]uint32{0x0110, 3, 6}), 0},
		{"bad byte order", append([]byte("XX"), tiff(binary.LittleEndian, [3]uint32{0x0112, 3, 6})[2:]...), 0},
		{"IFD past the end", func() []byte {
			b := tiff(binary.LittleEndian, [3]uint32{0x0112, 3, 6})
			binary.LittleEndian.PutUint32(b[4:], 1000)
			return b
		}(), 0},
		{"entries cut off", tiff(binary.LittleEndian, [3]uint32{0x0112, 3, 6})[:14], 0},
		{"empty", nil, 0},
	} {
		if got := tiffOrientation(tc.data); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestXMPOrientation(t *testing.T) {
	for _, tc := range []struct {
		xmp  string
		want Orientation
	}{
		{`<rdf:Description tiff:Orientation="6"/>`, 6},
		{`<tiff:Orientation>3</tiff:Orientation>`, 3},
		{`<tiff:Orientation x="1">7</tiff:Orientation> tiff:Orientation="8"`, 8}, // first match of the pattern
		{`<tiff:OrientationX>3`, 0},
		{``, 0},
	} {
		if got := xmpOrientation([]byte(tc.xmp)); got != tc.want {
			t.Errorf("%q: %d, want %d", tc.xmp, got, tc.want)
		}
	}
	// EXIF wins over XMP; XMP is the fallback.
	exif := tiff(binary.LittleEndian, [3]uint32{0x0112, 3, 2})
	if got := orientationFrom(exif, []byte(`tiff:Orientation="5"`)); got != 2 {
		t.Errorf("EXIF and XMP: %d, want the EXIF 2", got)
	}
	if got := orientationFrom(tiff(binary.LittleEndian), []byte(`tiff:Orientation="5"`)); got != 5 {
		t.Errorf("XMP fallback: %d, want 5", got)
	}
}
