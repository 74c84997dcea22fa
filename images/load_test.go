package images

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pngChunk is one chunk to write into a hand-built PNG.
type pngChunk struct {
	typ  string
	body []byte
}

func appendChunk(b []byte, c pngChunk) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(c.body)))
	start := len(b)
	b = append(b, c.typ...)
	b = append(b, c.body...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b[start:]))
}

// buildPNG writes a PNG with the given header fields and raw (unfiltered) rows, and extra chunks
// placed before IDAT.
func buildPNG(t testing.TB, w, h int, depth, colourType uint8, rows [][]byte, extra ...pngChunk) []byte {
	t.Helper()
	b := []byte("\x89PNG\r\n\x1a\n")
	ihdr := binary.BigEndian.AppendUint32(nil, uint32(w))
	ihdr = binary.BigEndian.AppendUint32(ihdr, uint32(h))
	ihdr = append(ihdr, depth, colourType, 0, 0, 0)
	b = appendChunk(b, pngChunk{"IHDR", ihdr})
	for _, c := range extra {
		b = appendChunk(b, c)
	}
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	for _, r := range rows {
		zw.Write([]byte{0}) // filter: none
		zw.Write(r)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	b = appendChunk(b, pngChunk{"IDAT", z.Bytes()})
	return appendChunk(b, pngChunk{"IEND", nil})
}

func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoadPNGModes: the PNG colour types, decoded and converted as PIL's open + convert("RGB") does.
func TestLoadPNGModes(t *testing.T) {
	for _, tc := range []struct {
		name       string
		depth, typ uint8
		row        []byte
		extra      []pngChunk
		want       []uint8 // RGB of the 2 pixels
	}{
		{"RGB8", 8, 2, []byte{1, 2, 3, 4, 5, 6}, nil, []uint8{1, 2, 3, 4, 5, 6}},
		{"RGBA8, transparent pixel keeps its colour", 8, 6, []byte{1, 2, 3, 0, 4, 5, 6, 255}, nil, []uint8{1, 2, 3, 4, 5, 6}},
		{"RGB16 keeps the high byte", 16, 2, []byte{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xff, 0xff, 0, 1, 0x80, 0}, nil,
			[]uint8{0x12, 0x56, 0x9a, 0xff, 0, 0x80}},
		{"grey 2-bit scales by 85", 2, 0, []byte{0b0111_0000}, nil, []uint8{85, 85, 85, 255, 255, 255}},
		{"grey 8 with tRNS keeps grey", 8, 0, []byte{9, 200}, []pngChunk{{"tRNS", []byte{0, 9}}}, []uint8{9, 9, 9, 200, 200, 200}},
		{"grey+alpha 16 keeps the high byte", 16, 4, []byte{0x12, 0x34, 0, 0, 0xab, 0xcd, 0xff, 0xff}, nil,
			[]uint8{0x12, 0x12, 0x12, 0xab, 0xab, 0xab}},
		// Pillow holds 16-bit grey as "I;16" and clips it to 255 when converting.
		{"grey 16 clips like Pillow", 16, 0, []byte{0x00, 0x80, 0x01, 0x00}, nil, []uint8{128, 128, 128, 255, 255, 255}},
		{"grey 16 with tRNS clips too", 16, 0, []byte{0x00, 0x80, 0x01, 0x00}, []pngChunk{{"tRNS", []byte{0x00, 0x80}}},
			[]uint8{128, 128, 128, 255, 255, 255}},
		{"palette with tRNS keeps the palette colour", 8, 3, []byte{1, 0},
			[]pngChunk{{"PLTE", []byte{10, 20, 30, 40, 50, 60}}, {"tRNS", []byte{255, 0}}},
			[]uint8{40, 50, 60, 10, 20, 30}},
	} {
		data := buildPNG(t, 2, 1, tc.depth, tc.typ, [][]byte{tc.row}, tc.extra...)
		img, err := Decode(data, LoadOptions{})
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if string(img.Pix) != string(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, img.Pix, tc.want)
		}
	}
}

// goJPEG encodes a small colourful picture with Go's encoder (4:2:0 YCbCr) for the EXIF tests.
func goJPEG(t testing.TB, w, h int) []byte {
	t.Helper()
	src := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			src.Set(x, y, color.RGBA{uint8(40 * x), uint8(60 * y), uint8(255 - 30*x), 255})
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, src, &jpeg.Options{Quality: 95}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// withAPP1 inserts APP1 segments right after SOI.
func withAPP1(data []byte, payloads ...[]byte) []byte {
	out := append([]byte(nil), data[:2]...)
	for _, p := range payloads {
		out = append(out, 0xff, 0xe1, byte((len(p)+2)>>8), byte(len(p)+2))
		out = append(out, p...)
	}
	return append(out, data[2:]...)
}

// TestLoadEXIF: the default ignores orientation (TinyLLaVA); ApplyEXIF applies it, from JPEG APP1
// EXIF, JPEG XMP, PNG eXIf and PNG iTXt XMP.
func TestLoadEXIF(t *testing.T) {
	plainJPEG := goJPEG(t, 5, 3)
	upright, err := Decode(plainJPEG, LoadOptions{ApplyEXIF: true})
	if err != nil {
		t.Fatal(err)
	}
	exifPayload := func(o uint32, order binary.ByteOrder) []byte {
		return append([]byte("Exif\x00\x00"), tiff(order, [3]uint32{0x0112, 3, o})...)
	}
	xmpPayload := func(o string) []byte {
		return []byte("http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><rdf:Description tiff:Orientation=\"" + o + "\"/></x:xmpmeta>")
	}
	pngRows := [][]byte{{1, 2, 3, 4, 5, 6, 7, 8, 9}, {10, 11, 12, 13, 14, 15, 16, 17, 18}}
	plainPNG := buildPNG(t, 3, 2, 8, 2, pngRows)
	uprightPNG, err := Decode(plainPNG, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		data   []byte
		base   *RGB
		orient Orientation
	}{
		{"JPEG EXIF II", withAPP1(plainJPEG, exifPayload(6, binary.LittleEndian)), upright, 6},
		{"JPEG EXIF MM", withAPP1(plainJPEG, exifPayload(8, binary.BigEndian)), upright, 8},
		{"JPEG XMP", withAPP1(plainJPEG, xmpPayload("3")), upright, 3},
		{"JPEG EXIF then XMP", withAPP1(plainJPEG, exifPayload(2, binary.BigEndian), xmpPayload("3")), upright, 2},
		{"JPEG first EXIF wins", withAPP1(plainJPEG, exifPayload(5, binary.BigEndian), exifPayload(7, binary.BigEndian)), upright, 5},
		{"PNG eXIf", buildPNG(t, 3, 2, 8, 2, pngRows, pngChunk{"eXIf", tiff(binary.BigEndian, [3]uint32{0x0112, 3, 7})}), uprightPNG, 7},
		{"PNG iTXt XMP", buildPNG(t, 3, 2, 8, 2, pngRows,
			pngChunk{"iTXt", []byte("XML:com.adobe.xmp\x00\x00\x00\x00\x00<tiff:Orientation>4</tiff:Orientation>")}), uprightPNG, 4},
	} {
		asIs, err := Decode(tc.data, LoadOptions{})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !bytes.Equal(asIs.Pix, tc.base.Pix) || asIs.Rect != tc.base.Rect {
			t.Errorf("%s: without ApplyEXIF the pixels changed", tc.name)
		}
		turned, err := Decode(tc.data, LoadOptions{ApplyEXIF: true})
		if err != nil {
			t.Fatal(err)
		}
		want := Orient(tc.base, tc.orient)
		if !bytes.Equal(turned.Pix, want.Pix) || turned.Rect != want.Rect {
			t.Errorf("%s: ApplyEXIF did not apply orientation %d", tc.name, tc.orient)
		}
	}
}

// TestLoadJPEGGreyAndRGB: a one-component JPEG becomes grey RGB.
func TestLoadJPEGGrey(t *testing.T) {
	g := image.NewGray(image.Rect(0, 0, 9, 4))
	for i := range g.Pix {
		g.Pix[i] = uint8(7 * i)
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, g, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	img, err := Decode(b.Bytes(), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 9*4; i++ {
		p := img.Pix[3*i : 3*i+3]
		if p[0] != p[1] || p[1] != p[2] {
			t.Fatalf("pixel %d is %v, not grey", i, p)
		}
		if d := int(p[0]) - int(g.Pix[i]); d > 6 || d < -6 {
			t.Fatalf("pixel %d is %d, the original %d", i, p[0], g.Pix[i])
		}
	}
}

// TestLoadErrors: every failure names the file and says what is wrong.
func TestLoadErrors(t *testing.T) {
	pngData, err := os.ReadFile(filepath.Join(goldenDir, "colourful_97x61.png"))
	if err != nil {
		t.Fatal(err)
	}
	jpgData, err := os.ReadFile(filepath.Join(goldenDir, "orientation6_80x50.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	badCRC := append([]byte(nil), pngData...)
	badCRC[40] ^= 0xff
	hugePNG := buildPNG(t, 100000, 100000, 8, 2, nil)
	for _, tc := range []struct {
		name     string
		data     []byte
		sentinel error
		words    string
	}{
		{"not-an-image.jpg", []byte("this is a text file, not a picture\n"), ErrNotImage, "unrecognised"},
		{"empty.png", nil, ErrNotImage, "empty"},
		{"anim.gif", []byte("GIF89a\x01\x00\x01\x00"), ErrUnsupportedFormat, "GIF"},
		{"pic.webp", []byte("RIFF\x10\x00\x00\x00WEBPVP8 "), ErrUnsupportedFormat, "WebP"},
		{"cut.jpg", jpgData[:len(jpgData)*6/10], nil, "truncated"},
		{"cut.png", pngData[:len(pngData)*6/10], nil, "truncated"},
		{"crc.png", badCRC, nil, "checksum"},
		{"huge.png", hugePNG, ErrTooLarge, "100000×100000"},
	} {
		path := writeFile(t, tc.name, tc.data)
		_, err := Load(path)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, path) || !strings.Contains(msg, tc.words) {
			t.Errorf("%s: %q does not name the file and say %q", tc.name, msg, tc.words)
		}
		if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
			t.Errorf("%s: %v does not wrap %v", tc.name, err, tc.sentinel)
		}
	}
	missing := filepath.Join(t.TempDir(), "missing.png")
	if _, err := Load(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}
}

// TestLoadJPEGTooLarge: the pixel limit is applied from the JPEG header, before decoding.
func TestLoadJPEGTooLarge(t *testing.T) {
	data := goJPEG(t, 8, 8)
	sof := bytes.Index(data, []byte{0xff, 0xc0})
	if sof < 0 {
		t.Fatal("no SOF0")
	}
	data[sof+5], data[sof+6], data[sof+7], data[sof+8] = 0xff, 0xff, 0xff, 0xff
	if _, err := Decode(data, LoadOptions{}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("65535×65535 JPEG: %v, want ErrTooLarge", err)
	}
}

func TestSniff(t *testing.T) {
	for _, tc := range []struct {
		data string
		want Format
	}{{"\x89PNG\r\n\x1a\nrest", PNG}, {"\xff\xd8\xff\xe0", JPEG}} {
		if f, err := Sniff([]byte(tc.data)); f != tc.want || err != nil {
			t.Errorf("%q: %v, %v", tc.data, f, err)
		}
	}
	for _, data := range []string{"II*\x00", "BM\x00\x00", "\xff\xd8\x00"} {
		if _, err := Sniff([]byte(data)); err == nil {
			t.Errorf("%q sniffed as an image", data)
		}
	}
}

// FuzzDecode: any input decodes or fails, never panics.
func FuzzDecode(f *testing.F) {
	for _, name := range []string{"colourful_97x61.png", "orientation6_80x50.jpg"} {
		data, err := os.ReadFile(filepath.Join(goldenDir, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, exif bool) {
		img, err := Decode(data, LoadOptions{ApplyEXIF: exif})
		if err != nil {
			return
		}
		if len(img.Pix) != 3*img.Rect.Dx()*img.Rect.Dy() {
			t.Fatalf("%v image with %d bytes", img.Rect, len(img.Pix))
		}
	})
}

// TestAllowTruncated: a cut-off JPEG decodes as Pillow decodes it with LOAD_TRUNCATED_IMAGES (an EOI
// appended, libjpeg's grey past the end of the data): the top rows are intact, the bottom rows grey.
func TestAllowTruncated(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(goldenDir, "orientation6_80x50.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	full, err := Decode(data, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cut := data[:len(data)*6/10]
	if _, err := Decode(cut, LoadOptions{}); err == nil {
		t.Fatal("truncated JPEG accepted without AllowTruncated")
	}
	img, err := Decode(cut, LoadOptions{AllowTruncated: true})
	if err != nil {
		t.Fatalf("AllowTruncated: %v", err)
	}
	w := img.Rect.Dx()
	if !bytes.Equal(img.Pix[:3*w*8], full.Pix[:3*w*8]) {
		t.Error("the first 8 rows differ from the complete file's")
	}
	for i, v := range img.Pix[3*w*(img.Rect.Dy()-1):] {
		if v != 128 {
			t.Fatalf("last row sample %d = %d, want grey 128", i, v)
		}
	}
}
