package dataset

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/images"
	"github.com/matsurgery/matsurgery/prompt"
)

// fileHashes returns the sha256 of every file under dir, by path relative to dir.
func fileHashes(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		sum := sha256.Sum256(data)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWriteShapesDeterministic(t *testing.T) {
	a, b, c := t.TempDir(), t.TempDir(), t.TempDir()
	for _, dir := range []string{a, b} {
		if err := WriteShapes(dir, 30, 11, 56); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteShapes(c, 30, 12, 56); err != nil {
		t.Fatal(err)
	}
	ha, hb, hc := fileHashes(t, a), fileHashes(t, b), fileHashes(t, c)
	if len(ha) != 31 {
		t.Fatalf("%d files, want 30 pictures and data.json", len(ha))
	}
	if fmt.Sprint(ha) != fmt.Sprint(hb) {
		t.Error("the same seed wrote different files")
	}
	same := 0
	for k, v := range ha {
		if hc[k] == v {
			same++
		}
	}
	if same > 3 { // a few small pictures may coincide by chance; most must not
		t.Errorf("seeds 11 and 12 share %d of %d files", same, len(ha))
	}
}

// TestShapesPinned pins what the generator draws: the decoded pixels of every picture and the text
// of data.json (not the PNG bytes, which depend on Go's compressor).
func TestShapesPinned(t *testing.T) {
	dir := t.TempDir()
	if err := WriteShapes(dir, 8, 2024, 56); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	data, err := os.ReadFile(filepath.Join(dir, "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	h.Write(data)
	for i := 0; i < 8; i++ {
		img, err := images.Load(filepath.Join(dir, "images", fmt.Sprintf("%06d.png", i)))
		if err != nil {
			t.Fatal(err)
		}
		h.Write(img.Pix)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != pinnedShapes {
		t.Errorf("shapes (8, seed 2024, 56): sha256 %s, pinned %s", got, pinnedShapes)
	}
}

const pinnedShapes = "0e41ea3ea7f6456f65d31e070899a021e020209bb0358c721757f578f7dc3b3f"

// TestShapesContent checks every picture against its record, from the pixels alone: one shape of
// the named colour on a plain grey background, whose fill of its bounding box says which shape it is
// (square 1, circle π/4, triangle 1/2); and the data reads back through Open and Sample.
func TestShapesContent(t *testing.T) {
	dir := t.TempDir()
	const n, size = 120, 56
	if err := WriteShapes(dir, n, 3, size); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	var recs []shapesRecord
	if err := json.Unmarshal(raw, &recs); err != nil {
		t.Fatal(err)
	}
	if len(recs) != n || !strings.Contains(string(raw), `"<image>\n`) {
		t.Fatalf("%d records (want %d), or <image> escaped", len(recs), n)
	}
	seenShapes, seenColours, seenKinds := map[string]bool{}, map[string]bool{}, map[bool]bool{}
	for i, rec := range recs {
		img, err := images.Load(filepath.Join(dir, rec.Image))
		if err != nil {
			t.Fatal(err)
		}
		if b := img.Bounds(); b.Dx() != size || b.Dy() != size {
			t.Fatalf("record %d: %v picture", i, b)
		}
		shape, colour := sceneFromPixels(t, img, size)
		q := rec.Conversations[0].Value
		a := rec.Conversations[1].Value
		askShape := strings.Contains(q, "What shape is")
		seenKinds[askShape] = true
		seenShapes[shape], seenColours[colour] = true, true
		wantQ := fmt.Sprintf("What colour is the %s?", shape)
		wantA := colour
		if askShape {
			wantQ, wantA = fmt.Sprintf("What shape is %s?", colour), shape
		}
		if q != prompt.ImageToken+"\n"+wantQ+"\n"+ShapesInstruction || !Accuracy(a, wantA) || strings.Contains(a, " ") {
			t.Errorf("record %d: the picture shows a %s %s; the record asks %q and answers %q", i, colour, shape, q, a)
		}
		if rec.ID != fmt.Sprintf("shapes-%06d", i) {
			t.Errorf("record %d: id %q", i, rec.ID)
		}
	}
	if len(seenShapes) != 3 || len(seenColours) != 6 || len(seenKinds) != 2 {
		t.Errorf("%d records drew shapes %v, colours %v, question kinds %v", n, seenShapes, seenColours, seenKinds)
	}

	opts := Options{Family: "phi", Tokenizer: loadTok(t, "phi"), ImageSize: size}
	d, err := Open(filepath.Join(dir, "data.json"), "", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := 0; i < d.Len(); i++ {
		s, err := d.Sample(i)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Pixels) != 3*size*size || count(s.IDs, prompt.ImagePlaceholder) != 1 {
			t.Fatalf("sample %d: %d pixel values, %d placeholders", i, len(s.Pixels), count(s.IDs, prompt.ImagePlaceholder))
		}
		// Values are (v/255 − 0.5)/0.5 of 8-bit samples: in [−1, 1], and the picture is not flat.
		lo, hi := slices.Min(s.Pixels), slices.Max(s.Pixels)
		if lo < -1 || hi > 1 || hi-lo < 0.2 {
			t.Fatalf("sample %d: pixel range [%g, %g]", i, lo, hi)
		}
		rec, err := d.Record(i)
		if err != nil {
			t.Fatal(err)
		}
		_, answer, err := rec.Question()
		if err != nil || answer != recs[i].Conversations[1].Value {
			t.Fatalf("record %d: answer %q, %v", i, answer, err)
		}
		if got := labelledText(opts.Tokenizer, s.Labels); got != " "+answer+"<|endoftext|>" {
			t.Errorf("sample %d: labelled %q", i, got)
		}
	}
}

// sceneFromPixels reads the shape and colour off a picture.
func sceneFromPixels(t *testing.T, img *images.RGB, size int) (shape, colour string) {
	t.Helper()
	bg := img.Pix[0:3]
	if img.Pix[0] != img.Pix[1] || img.Pix[1] != img.Pix[2] || img.Pix[0] < 215 {
		// The corner may be covered by the shape: take the most common colour instead.
		counts := map[[3]uint8]int{}
		for p := 0; p < len(img.Pix); p += 3 {
			counts[[3]uint8(img.Pix[p:p+3])]++
		}
		best := 0
		for c, k := range counts {
			if k > best && c[0] == c[1] && c[1] == c[2] {
				best, bg = k, []uint8{c[0], c[1], c[2]}
			}
		}
	}
	var fg [3]uint8
	area, minX, minY, maxX, maxY := 0, size, size, -1, -1
	for y := 0; y < size; y++ {
		for x := 0; x < size; x++ {
			p := img.Pix[img.PixOffset(x, y):][:3]
			if slices.Equal(p, bg) {
				continue
			}
			if area > 0 && [3]uint8(p) != fg {
				t.Fatalf("a third colour %v (shape %v, background %v)", p, fg, bg)
			}
			fg = [3]uint8(p)
			area++
			minX, minY, maxX, maxY = min(minX, x), min(minY, y), max(maxX, x), max(maxY, y)
		}
	}
	if area == 0 {
		t.Fatal("no shape")
	}
	for _, c := range palette {
		if c.rgb == fg {
			colour = c.name
		}
	}
	if colour == "" {
		t.Fatalf("shape colour %v is not in the palette", fg)
	}
	w, h := maxX-minX+1, maxY-minY+1
	fill := float64(area) / float64(w*h)
	switch {
	case math.Abs(fill-1) < 0.02 && w == h:
		shape = "square"
	case math.Abs(fill-math.Pi/4) < 0.06 && abs(w-h) <= 1:
		shape = "circle"
	case math.Abs(fill-0.5) < 0.08:
		shape = "triangle"
	default:
		t.Fatalf("a %d×%d shape filling %.3f of its box is none of the shapes", w, h, fill)
	}
	if w < size/4-1 || w > size*3/5 {
		t.Fatalf("%s of width %d in a %d picture", shape, w, size)
	}
	return shape, colour
}

func abs(x int) int { return max(x, -x) }

func TestWriteShapesErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ n, size int }{{0, 56}, {-1, 56}, {3, 8}, {3, 5000}} {
		if err := WriteShapes(dir, c.n, 1, c.size); err == nil {
			t.Errorf("WriteShapes(n %d, size %d): no error", c.n, c.size)
		}
	}
	blocker := filepath.Join(dir, "file")
	writeFile(t, blocker, "x")
	if err := WriteShapes(blocker, 2, 1, 56); err == nil {
		t.Error("WriteShapes into a file: no error")
	}
}

func TestAccuracy(t *testing.T) {
	for _, c := range []struct {
		answer, reference string
		want              bool
	}{
		{"Red", "Red", true},
		{" red.", "Red", true},
		{"RED!", "red", true},
		{"\n  Triangle<|endoftext|>", "Triangle", true},
		{"«Blue», I think", "blue", true},
		{"red-ish", "Red", true},
		{"Redder", "Red", false},
		{"The square is red", "Red", false},
		{"green", "Red", false},
		{"", "Red", false},
		{"...", "", false},
		{"Grün", "grün", true},
	} {
		if got := Accuracy(c.answer, c.reference); got != c.want {
			t.Errorf("Accuracy(%q, %q) = %v, want %v", c.answer, c.reference, got, c.want)
		}
	}
	if names := ColourNames(); len(names) < 4 || len(names) > 6 {
		t.Errorf("%d colours", len(names))
	}
}
