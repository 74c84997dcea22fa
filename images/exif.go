package images

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
)

// Orientation is the EXIF Orientation tag (0x0112): how the stored pixels must be turned to display
// upright. 1 is "as stored"; 0 means the file has no (valid) tag.
type Orientation int

// exifOrientationTag is the TIFF tag number of Orientation.
const exifOrientationTag = 0x0112

// tiffOrientation reads the Orientation entry of IFD0 from a TIFF structure (an EXIF payload without
// its "Exif\0\0" prefix). It returns 0 when the structure is malformed or has no such entry: like
// Pillow's getexif, a damaged EXIF block is not an error, it just carries no orientation.
func tiffOrientation(tiff []byte) Orientation {
	if len(tiff) < 8 {
		return 0
	}
	var order binary.ByteOrder
	switch string(tiff[:2]) {
	case "II":
		order = binary.LittleEndian
	case "MM":
		order = binary.BigEndian
	default:
		return 0
	}
	if order.Uint16(tiff[2:]) != 42 {
		return 0
	}
	ifd := int64(order.Uint32(tiff[4:]))
	if ifd < 8 || ifd+2 > int64(len(tiff)) {
		return 0
	}
	n := int64(order.Uint16(tiff[ifd:]))
	for i := int64(0); i < n; i++ {
		e := ifd + 2 + 12*i
		if e+12 > int64(len(tiff)) {
			return 0
		}
		if order.Uint16(tiff[e:]) != exifOrientationTag {
			continue
		}
		typ, count := order.Uint16(tiff[e+2:]), order.Uint32(tiff[e+4:])
		if count < 1 {
			return 0
		}
		switch typ {
		case 3: // SHORT
			return Orientation(order.Uint16(tiff[e+8:]))
		case 4, 9: // LONG, SLONG
			return Orientation(int32(order.Uint32(tiff[e+8:])))
		case 1, 7: // BYTE, UNDEFINED
			return Orientation(tiff[e+8])
		}
		return 0
	}
	return 0
}

// xmpOrientation finds `tiff:Orientation="N"` or `<tiff:Orientation>N` in an XMP packet, which
// Pillow's getexif falls back to when the EXIF block has no Orientation.
func xmpOrientation(xmp []byte) Orientation {
	const key = "tiff:Orientation"
	for i := 0; ; {
		j := bytes.Index(xmp[i:], []byte(key))
		if j < 0 {
			return 0
		}
		rest := xmp[i+j+len(key):]
		switch {
		case len(rest) >= 3 && rest[0] == '=' && rest[1] == '"' && isDigit(rest[2]):
			return Orientation(rest[2] - '0')
		case len(rest) >= 2 && rest[0] == '>' && isDigit(rest[1]):
			return Orientation(rest[1] - '0')
		}
		i += j + len(key)
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// orientationFrom combines the EXIF and XMP sources as Pillow's getexif does: the EXIF tag wins when
// present, else the XMP one.
func orientationFrom(exif, xmp []byte) Orientation {
	if len(exif) > 0 {
		if o := tiffOrientation(exif); o != 0 {
			return o
		}
	}
	if len(xmp) > 0 {
		return xmpOrientation(xmp)
	}
	return 0
}

// pngMetadata returns the payload of a PNG's eXIf chunk and of its uncompressed
// "XML:com.adobe.xmp" iTXt chunk (nil when absent), walking the chunk list without checking CRCs.
func pngMetadata(data []byte) (exif, xmp []byte) {
	const sigLen = 8
	for p := sigLen; p+8 <= len(data); {
		n := int(binary.BigEndian.Uint32(data[p:]))
		typ := string(data[p+4 : p+8])
		if n < 0 || p+8+n > len(data) {
			return exif, xmp
		}
		body := data[p+8 : p+8+n]
		switch typ {
		case "eXIf":
			if exif == nil {
				exif = body
			}
		case "iTXt":
			const kw = "XML:com.adobe.xmp\x00"
			// keyword, NUL, compression flag, method, language tag NUL, translated keyword NUL, text
			if xmp == nil && bytes.HasPrefix(body, []byte(kw)) && len(body) > len(kw)+2 && body[len(kw)] == 0 {
				rest := body[len(kw)+2:]
				if i := bytes.IndexByte(rest, 0); i >= 0 {
					rest = rest[i+1:]
					if i := bytes.IndexByte(rest, 0); i >= 0 {
						xmp = rest[i+1:]
					}
				}
			}
		case "IEND":
			return exif, xmp
		}
		p += 12 + n
	}
	return exif, xmp
}

// Orient returns img turned upright according to an EXIF orientation, as PIL.ImageOps.exif_transpose
// does: 2 mirror, 3 rotate 180°, 4 flip, 5 transpose, 6 rotate 90° clockwise, 7 transverse, 8 rotate 90°
// counter-clockwise. Any other value (1, 0, out of range) returns img unchanged (not copied).
func Orient(img *RGB, o Orientation) *RGB {
	if o < 2 || o > 8 {
		return img
	}
	w, h := img.Rect.Dx(), img.Rect.Dy()
	ow, oh := w, h
	if o >= 5 {
		ow, oh = h, w
	}
	out := NewRGB(image.Rect(0, 0, ow, oh))
	for y := 0; y < oh; y++ {
		dst := out.row(y)
		for x := 0; x < ow; x++ {
			var sx, sy int // source pixel of output (x, y)
			switch o {
			case 2: // FLIP_LEFT_RIGHT
				sx, sy = w-1-x, y
			case 3: // ROTATE_180
				sx, sy = w-1-x, h-1-y
			case 4: // FLIP_TOP_BOTTOM
				sx, sy = x, h-1-y
			case 5: // TRANSPOSE
				sx, sy = y, x
			case 6: // ROTATE_270 (90° clockwise)
				sx, sy = y, h-1-x
			case 7: // TRANSVERSE
				sx, sy = w-1-y, h-1-x
			case 8: // ROTATE_90 (90° counter-clockwise)
				sx, sy = w-1-y, x
			}
			s := img.row(sy)[3*sx : 3*sx+3]
			copy(dst[3*x:3*x+3], s)
		}
	}
	return out
}

// String names the transform an orientation asks for.
func (o Orientation) String() string {
	names := [...]string{0: "none", 1: "upright", 2: "mirrored", 3: "rotated 180°", 4: "flipped",
		5: "transposed", 6: "rotated 90° clockwise", 7: "transversed", 8: "rotated 90° counter-clockwise"}
	if o >= 0 && int(o) < len(names) {
		return names[o]
	}
	return fmt.Sprintf("Orientation(%d)", int(o))
}
