package jpegdec

// The files in testdata/ are copies of Go's own image/testdata JPEGs (baseline, progressive, every
// chroma subsampling, restart intervals, grey, RGB, CMYK). Pillow's pixels for them are not available
// on this machine, so they check the parts of the decoder that have a second implementation to compare
// with: the entropy decoding and the per-component planes, against Go's image/jpeg, which differs from
// libjpeg only in its IDCT rounding (±1). Bit-exactness against Pillow itself is checked in package
// images on the golden JPEG made by Pillow (testdata/golden/images).

import (
	"bytes"
	"errors"
	"image"
	"image/jpeg"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const noLimit = 1 << 40

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// decodePlanes runs the decoder up to (and including) the IDCT, leaving the component planes.
func decodePlanes(t *testing.T, data []byte) *decoder {
	t.Helper()
	d := &decoder{data: data, maxPixels: noLimit}
	if err := d.run(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.output(); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestPlanesMatchGo compares every component plane (before upsampling and colour conversion) with the
// planes Go's decoder returns: the two IDCTs round differently, so samples may differ by 1, never more.
// Any error in Huffman decoding, progressive refinement, restarts or block placement shows up as large
// differences.
func TestPlanesMatchGo(t *testing.T) {
	files, err := filepath.Glob("testdata/*.jpeg")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	checked := 0
	for _, f := range files {
		data := readTestdata(t, filepath.Base(f))
		std, err := jpeg.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: image/jpeg: %v", f, err)
		}
		var planes [][]uint8
		var strides []int
		switch m := std.(type) {
		case *image.YCbCr:
			planes, strides = [][]uint8{m.Y, m.Cb, m.Cr}, []int{m.YStride, m.CStride, m.CStride}
		case *image.Gray:
			planes, strides = [][]uint8{m.Pix}, []int{m.Stride}
		default:
			continue // RGB and CMYK files come back converted; see TestConvertedMatchGo
		}
		d := decodePlanes(t, data)
		if len(d.comps) != len(planes) {
			t.Fatalf("%s: %d components, image/jpeg has %d", f, len(d.comps), len(planes))
		}
		maxDiff, differ, total := 0, 0, 0
		for i, c := range d.comps {
			for y := 0; y < c.dh; y++ {
				for x := 0; x < c.dw; x++ {
					a, b := int(c.plane[y*c.stride+x]), int(planes[i][y*strides[i]+x])
					maxDiff = max(maxDiff, a-b, b-a)
					if a != b {
						differ++
					}
					total++
				}
			}
		}
		if maxDiff > 1 || differ*20 > total {
			t.Errorf("%s: planes differ from image/jpeg by up to %d (%d of %d samples)", f, maxDiff, differ, total)
		}
		checked++
	}
	if checked < 20 {
		t.Fatalf("only %d files compared", checked)
	}
}

// TestConvertedMatchGo checks the RGB and CMYK files on their full-resolution channels, where no
// upsampling is involved: within ±1 of image/jpeg.
func TestConvertedMatchGo(t *testing.T) {
	for _, tc := range []struct {
		file     string
		channels []int // channels to compare (the RGB file subsamples G and B)
	}{
		{"video-001.rgb.jpeg", []int{0}},
		{"video-001.cmyk.jpeg", []int{0, 1, 2, 3}},
	} {
		data := readTestdata(t, tc.file)
		img, err := Decode(data, noLimit)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		std, err := jpeg.Decode(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		var pix []uint8
		switch m := std.(type) {
		case *image.RGBA:
			pix = m.Pix
		case *image.CMYK:
			pix = m.Pix
		default:
			t.Fatalf("%s: image/jpeg returned %T", tc.file, std)
		}
		maxDiff := 0
		for i := 0; i < img.Width*img.Height; i++ {
			for _, c := range tc.channels {
				a, b := int(img.Pix[i*img.Channels+c]), int(pix[4*i+c])
				maxDiff = max(maxDiff, a-b, b-a)
			}
		}
		if maxDiff > 1 {
			t.Errorf("%s: differs from image/jpeg by up to %d", tc.file, maxDiff)
		}
	}
}

// TestProgressiveEqualsSequential: the progressive files hold the same coefficients as their
// sequential twins, so the decoded pixels must be identical.
func TestProgressiveEqualsSequential(t *testing.T) {
	pairs := [][2]string{
		{"video-001.jpeg", "video-001.progressive.jpeg"},
		{"video-001.q50.410.jpeg", "video-001.q50.410.progressive.jpeg"},
		{"video-001.q50.411.jpeg", "video-001.q50.411.progressive.jpeg"},
		{"video-001.q50.420.jpeg", "video-001.q50.420.progressive.jpeg"},
		{"video-001.q50.422.jpeg", "video-001.q50.422.progressive.jpeg"},
		{"video-001.q50.440.jpeg", "video-001.q50.440.progressive.jpeg"},
		{"video-001.q50.444.jpeg", "video-001.q50.444.progressive.jpeg"},
		{"video-001.separate.dc.progression.jpeg", "video-001.separate.dc.progression.progressive.jpeg"},
		{"video-005.gray.q50.jpeg", "video-005.gray.q50.progressive.jpeg"},
		{"video-005.gray.q50.2x2.jpeg", "video-005.gray.q50.2x2.progressive.jpeg"},
	}
	for _, p := range pairs {
		a, err := Decode(readTestdata(t, p[0]), noLimit)
		if err != nil {
			t.Fatalf("%s: %v", p[0], err)
		}
		b, err := Decode(readTestdata(t, p[1]), noLimit)
		if err != nil {
			t.Fatalf("%s: %v", p[1], err)
		}
		if a.Width != b.Width || a.Height != b.Height || a.Channels != b.Channels || !bytes.Equal(a.Pix, b.Pix) {
			t.Errorf("%s and %s decode differently", p[0], p[1])
		}
		if a.Corrupt || b.Corrupt || b.Unsmoothed {
			t.Errorf("%s/%s: flagged corrupt=%v/%v unsmoothed=%v", p[0], p[1], a.Corrupt, b.Corrupt, b.Unsmoothed)
		}
	}
}

// TestIncompleteProgressiveIsFlagged: Go's "truncated" progressive file ends with EOI after its first
// scans; libjpeg would smooth its blocks, which Decode reports.
func TestIncompleteProgressiveIsFlagged(t *testing.T) {
	img, err := Decode(readTestdata(t, "video-001.progressive.truncated.jpeg"), noLimit)
	if err != nil {
		t.Fatal(err)
	}
	if !img.Unsmoothed {
		t.Error("Unsmoothed not set for a progressive file with unrefined coefficients")
	}
}

// TestColourSpaces checks libjpeg's choice of colour space on the test files.
func TestColourSpaces(t *testing.T) {
	for _, tc := range []struct {
		file     string
		channels int
		rgb      bool
	}{
		{"video-001.jpeg", 3, false},
		{"video-001.rgb.jpeg", 3, true}, // Adobe transform 0
		{"video-001.cmyk.jpeg", 4, false},
		{"video-005.gray.jpeg", 1, false},
	} {
		d := &decoder{data: readTestdata(t, tc.file), maxPixels: noLimit}
		if err := d.run(); err != nil {
			t.Fatal(err)
		}
		if len(d.comps) != tc.channels || (tc.channels == 3 && d.colourRGB() != tc.rgb) {
			t.Errorf("%s: %d components, RGB %v; want %d, %v", tc.file, len(d.comps), d.colourRGB(), tc.channels, tc.rgb)
		}
	}
}

// cutScan returns a copy of the file with the entropy data of its first scan cut at fraction f and
// replaced by the given tail bytes.
func cutScan(t *testing.T, data []byte, f float64, tail []byte) []byte {
	t.Helper()
	sos := bytes.Index(data, []byte{0xff, mSOS})
	if sos < 0 {
		t.Fatal("no SOS")
	}
	start := sos + 2 + (int(data[sos+2])<<8 | int(data[sos+3]))
	eoi := bytes.LastIndex(data, []byte{0xff, mEOI})
	cut := start + int(f*float64(eoi-start))
	for data[cut-1] == 0xff { // do not leave half of a stuffed pair
		cut--
	}
	out := append([]byte(nil), data[:cut]...)
	return append(out, tail...)
}

// TestCorruptDataGoesGrey: a scan cut short by a marker decodes like libjpeg: the MCU where the data
// ends gets zero bits, the following MCUs are uniform grey (all-zero coefficients → 128), and the image
// is flagged Corrupt rather than refused.
func TestCorruptDataGoesGrey(t *testing.T) {
	data := readTestdata(t, "video-005.gray.jpeg")
	full, err := Decode(data, noLimit)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Decode(cutScan(t, data, 0.5, []byte{0xff, mEOI}), noLimit)
	if err != nil {
		t.Fatal(err)
	}
	if !img.Corrupt || full.Corrupt {
		t.Fatalf("Corrupt = %v (cut), %v (full)", img.Corrupt, full.Corrupt)
	}
	// The first rows still match; the last rows are grey.
	w := img.Width
	if !bytes.Equal(img.Pix[:8*w], full.Pix[:8*w]) {
		t.Error("the first MCU row changed")
	}
	for i, v := range img.Pix[(img.Height-8)*w:] {
		if v != 128 {
			t.Fatalf("last MCU row sample %d is %d, want 128", i, v)
		}
	}
}

// TestMissingEOI: Pillow keeps a single-scan baseline image whose EOI is missing, but a multi-scan
// (progressive) file without EOI is truncated.
func TestMissingEOI(t *testing.T) {
	base := readTestdata(t, "video-001.jpeg")
	full, err := Decode(base, noLimit)
	if err != nil {
		t.Fatal(err)
	}
	eoi := bytes.LastIndex(base, []byte{0xff, mEOI})
	img, err := Decode(base[:eoi], noLimit)
	if err != nil {
		t.Fatalf("baseline without EOI: %v", err)
	}
	if !bytes.Equal(img.Pix, full.Pix) {
		t.Error("baseline without EOI decodes differently")
	}
	prog := readTestdata(t, "video-001.progressive.jpeg")
	eoi = bytes.LastIndex(prog, []byte{0xff, mEOI})
	if _, err := Decode(prog[:eoi], noLimit); !errors.Is(err, ErrTruncated) {
		t.Errorf("progressive without EOI: %v, want ErrTruncated", err)
	}
}

func TestTruncated(t *testing.T) {
	for _, name := range []string{"video-001.jpeg", "video-001.progressive.jpeg", "video-001.restart2.jpeg"} {
		data := readTestdata(t, name)
		for _, f := range []float64{0.01, 0.5, 0.99} {
			cut := cutScan(t, data, f, nil)
			if _, err := Decode(cut, noLimit); !errors.Is(err, ErrTruncated) {
				t.Errorf("%s cut at %.0f%% of the scan: %v, want ErrTruncated", name, 100*f, err)
			}
		}
		// Cut inside the headers.
		if _, err := Decode(data[:100], noLimit); !errors.Is(err, ErrTruncated) {
			t.Errorf("%s cut in its headers: %v, want ErrTruncated", name, err)
		}
	}
}

// TestRestartResync: restart markers out of sequence follow libjpeg's jpeg_resync_to_restart policy.
// A marker far from the expected number is taken for the expected one (same pixels); one of the next
// two expected numbers is left in place, so the segment before it reads as empty (grey). Either way
// the image is decoded and flagged Corrupt.
func TestRestartResync(t *testing.T) {
	orig := readTestdata(t, "video-001.restart2.jpeg")
	want, err := Decode(orig, noLimit)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(orig, []byte{0xff, mRST0 + 1})
	if i < 0 {
		t.Fatal("no RST1 marker")
	}
	for _, tc := range []struct {
		marker byte
		same   bool
	}{
		{mRST0 + 5, true},  // too far away: discarded as if it were RST1
		{mRST0 + 3, false}, // expected + 2: left for later, the segment reads as empty
	} {
		data := append([]byte(nil), orig...)
		data[i+1] = tc.marker
		img, err := Decode(data, noLimit)
		if err != nil {
			t.Fatalf("RST%d in place of RST1: %v", tc.marker-mRST0, err)
		}
		if !img.Corrupt {
			t.Errorf("RST%d in place of RST1: not flagged corrupt", tc.marker-mRST0)
		}
		if same := bytes.Equal(img.Pix, want.Pix); same != tc.same {
			t.Errorf("RST%d in place of RST1: pixels unchanged = %v, want %v", tc.marker-mRST0, same, tc.same)
		}
	}
}

func TestUnsupportedAndInvalid(t *testing.T) {
	base := readTestdata(t, "video-001.jpeg")
	sof := bytes.Index(base, []byte{0xff, mSOF0})
	if sof < 0 {
		t.Fatal("no SOF0")
	}
	withByte := func(i int, v byte) []byte {
		d := append([]byte(nil), base...)
		d[i] = v
		return d
	}
	var unsupported UnsupportedError
	var invalid FormatError
	for _, tc := range []struct {
		name string
		data []byte
		want any // *UnsupportedError, *FormatError or an error value
	}{
		{"arithmetic", withByte(sof+1, 0xc9), &unsupported},
		{"lossless", withByte(sof+1, 0xc3), &unsupported},
		{"12-bit", withByte(sof+4, 12), &unsupported},
		{"DNL height", func() []byte { d := withByte(sof+5, 0); d[sof+6] = 0; return d }(), &unsupported},
		{"no SOI", base[2:], &invalid},
		{"bad sampling", withByte(sof+11, 0x55), &invalid},
		{"not JPEG", []byte("hello, world"), &invalid},
	} {
		_, err := Decode(tc.data, noLimit)
		switch w := tc.want.(type) {
		case *UnsupportedError:
			if !errors.As(err, w) {
				t.Errorf("%s: %v, want an UnsupportedError", tc.name, err)
			}
		case *FormatError:
			if !errors.As(err, w) {
				t.Errorf("%s: %v, want a FormatError", tc.name, err)
			}
		}
	}
	// The pixel limit is checked before allocating.
	var limit *LimitError
	if _, err := Decode(base, 100); !errors.As(err, &limit) || limit.Width != 150 || limit.Height != 103 {
		t.Errorf("limit: %v", err)
	}
}

func TestBadHuffmanTables(t *testing.T) {
	var counts [16]uint8
	counts[0] = 3 // three 1-bit codes
	if _, err := newHuffTable(counts, []uint8{0, 1, 2}, false); err == nil || !strings.Contains(err.Error(), "more codes") {
		t.Errorf("oversubscribed table: %v", err)
	}
	counts[0] = 2
	if _, err := newHuffTable(counts, []uint8{0, 16}, true); err == nil {
		t.Error("DC symbol 16 accepted")
	}
	if _, err := newHuffTable(counts, []uint8{0}, false); err == nil {
		t.Error("symbol count mismatch accepted")
	}
}

// TestHuffmanDecodeHand decodes a hand-made bit string with a hand-made table: codes 0 (A), 10 (B),
// 110 (C), 1110 (D) and one 12-bit code 111100000000 (E), which takes the slow path.
func TestHuffmanDecodeHand(t *testing.T) {
	var counts [16]uint8
	counts[0], counts[1], counts[2], counts[3], counts[11] = 1, 1, 1, 1, 1
	tab, err := newHuffTable(counts, []uint8{'A', 'B', 'C', 'D', 'E'}, false)
	if err != nil {
		t.Fatal(err)
	}
	// A B C D E A then padding ones: 0 10 110 1110 111100000000 0 1… → 5B BC 01 FF(00 stuffed)
	bits := []byte{0x5b, 0xbc, 0x01, 0xff, 0x00}
	br := newBitReader(bits, 0)
	var got []byte
	for range 6 {
		s, err := br.decode(tab)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
	}
	if string(got) != "ABCDEA" {
		t.Errorf("decoded %q, want ABCDEA", got)
	}
}

func TestBitReaderStuffingAndMarkers(t *testing.T) {
	// FF 00 is a data byte FF; FF FF D9 is a marker after a fill byte.
	br := newBitReader([]byte{0xff, 0x00, 0x81, 0xff, 0xff, 0xd9}, 0)
	for _, want := range []int32{0xff, 0x81} {
		v, err := br.bits(8)
		if err != nil || v != want {
			t.Fatalf("bits = %#x, %v; want %#x", v, err, want)
		}
	}
	if br.insufficient {
		t.Fatal("insufficient before the marker")
	}
	v, err := br.bits(4)
	if err != nil || v != 0 || !br.insufficient || br.marker != 5 {
		t.Errorf("past the marker: %d, %v, insufficient %v, marker at %d", v, err, br.insufficient, br.marker)
	}
	// At the end of the input (no marker) the reader reports truncation.
	br = newBitReader([]byte{0x12}, 0)
	if _, err := br.bits(12); !errors.Is(err, errTruncated) {
		t.Errorf("end of input: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, name := range []string{"video-001.q50.420.jpeg", "video-001.q50.420.progressive.jpeg", "video-001.restart2.jpeg", "video-005.gray.q50.jpeg"} {
		f.Add(readTestdata(f, name))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Decode(data, 1<<16)
		if err != nil {
			return
		}
		if len(img.Pix) != img.Width*img.Height*img.Channels {
			t.Fatalf("%d×%d×%d image with %d samples", img.Width, img.Height, img.Channels, len(img.Pix))
		}
	})
}

// TestMutatedFilesDoNotPanic decodes seeded random corruptions of the test files (bytes overwritten,
// inserted, deleted): every one must come back as an image of consistent size or as an error.
func TestMutatedFilesDoNotPanic(t *testing.T) {
	seeds := []string{"video-001.q50.420.jpeg", "video-001.q50.420.progressive.jpeg", "video-001.restart2.jpeg",
		"video-005.gray.q50.2x2.progressive.jpeg", "video-001.q50.411.jpeg", "video-001.cmyk.jpeg"}
	rng := rand.New(rand.NewPCG(2024, 11))
	decoded := 0
	for i := range 1500 {
		d := append([]byte(nil), readTestdata(t, seeds[i%len(seeds)])...)
		for range 1 + rng.IntN(6) {
			p := rng.IntN(len(d))
			switch rng.IntN(3) {
			case 0:
				d[p] = byte(rng.IntN(256))
			case 1:
				d = append(d[:p], append([]byte{byte(rng.IntN(256))}, d[p:]...)...)
			default:
				d = append(d[:p], d[p+1:]...)
			}
		}
		img, err := Decode(d, 1<<16)
		if err != nil {
			continue
		}
		decoded++
		if len(img.Pix) != img.Width*img.Height*img.Channels {
			t.Fatalf("mutation %d: %d×%d×%d image with %d samples", i, img.Width, img.Height, img.Channels, len(img.Pix))
		}
	}
	t.Logf("%d of 1500 mutated files decoded, the rest refused", decoded)
}
