package dataset

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	"github.com/matsurgery/matsurgery/prompt"
)

// The coloured-shapes task: one plain shape on a plain light background, and a question about its
// colour or its shape, answered by one word.

// ShapeNames are the shapes WriteShapes draws.
var ShapeNames = []string{"square", "circle", "triangle"}

// colour is a named paint of the shapes task.
type colour struct {
	name string
	rgb  [3]uint8
}

// palette holds six colours far apart from each other and from the light grey backgrounds.
var palette = []colour{
	{"red", [3]uint8{220, 38, 38}},
	{"green", [3]uint8{34, 160, 60}},
	{"blue", [3]uint8{37, 80, 220}},
	{"yellow", [3]uint8{235, 200, 20}},
	{"purple", [3]uint8{140, 55, 185}},
	{"orange", [3]uint8{245, 130, 25}},
}

// ColourNames are the colours WriteShapes paints with.
func ColourNames() []string {
	names := make([]string, len(palette))
	for i, c := range palette {
		names[i] = c.name
	}
	return names
}

// ShapesInstruction follows every question, as LLaVA-1.5's short-answer VQA data phrases it.
const ShapesInstruction = "Answer the question using a single word or phrase."

const (
	minShapesSize = 16
	maxShapesSize = 4096
	shapesStream  = 0x5a4a7e5 // stream number of the generator's draws
)

// shapeScene is one picture and its question.
type shapeScene struct {
	shape, colour int
	background    uint8
	x, y, side    int  // the shape's bounding square
	askShape      bool // "What shape is red?" rather than "What colour is the square?"
}

// drawScene draws s on a size×size canvas. Every test is in integers on doubled coordinates (pixel
// centres at odd values), so the pixels are the same on every machine.
func drawScene(s shapeScene, size int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, size, size))
	fg := palette[s.colour].rgb
	x0, y0, d := 2*s.x, 2*s.y, 2*s.side // doubled bounding square
	for py := 0; py < size; py++ {
		for px := 0; px < size; px++ {
			cx, cy := 2*px+1, 2*py+1
			inside := false
			switch ShapeNames[s.shape] {
			case "square":
				inside = cx >= x0 && cx < x0+d && cy >= y0 && cy < y0+d
			case "circle":
				dx, dy := 2*cx-(2*x0+d), 2*cy-(2*y0+d) // quadrupled offsets from the centre
				inside = dx*dx+dy*dy <= d*d
			case "triangle": // apex at the top middle, base along the bottom edge
				ax, ay := x0+d/2, y0
				bx, by := x0, y0+d
				qx, qy := x0+d, y0+d
				e1 := (bx-ax)*(cy-ay) - (by-ay)*(cx-ax)
				e2 := (qx-bx)*(cy-by) - (qy-by)*(cx-bx)
				e3 := (ax-qx)*(cy-qy) - (ay-qy)*(cx-qx)
				inside = (e1 <= 0 && e2 <= 0 && e3 <= 0) || (e1 >= 0 && e2 >= 0 && e3 >= 0)
			}
			o := img.PixOffset(px, py)
			p := img.Pix[o : o+4 : o+4]
			if inside {
				p[0], p[1], p[2] = fg[0], fg[1], fg[2]
			} else {
				p[0], p[1], p[2] = s.background, s.background, s.background
			}
			p[3] = 0xff
		}
	}
	return img
}

// newScene draws the next scene from r.
func newScene(r stream, size int) shapeScene {
	s := shapeScene{
		shape:      int(r.below(uint64(len(ShapeNames)))),
		colour:     int(r.below(uint64(len(palette)))),
		background: uint8(r.between(215, 255)),
	}
	s.side = r.between(size/4, size*3/5)
	s.x = r.between(0, size-s.side)
	s.y = r.between(0, size-s.side)
	s.askShape = r.below(2) == 1
	return s
}

// conversation is the scene's question and one-word answer.
func (s shapeScene) conversation() []prompt.Turn {
	var q, a string
	if s.askShape {
		q, a = fmt.Sprintf("What shape is %s?", palette[s.colour].name), ShapeNames[s.shape]
	} else {
		q, a = fmt.Sprintf("What colour is the %s?", ShapeNames[s.shape]), palette[s.colour].name
	}
	return []prompt.Turn{
		{From: "human", Value: prompt.ImageToken + "\n" + q + "\n" + ShapesInstruction},
		{From: "gpt", Value: strings.ToUpper(a[:1]) + a[1:]},
	}
}

// shapesRecord is a record of the written data.json, fields in LLaVA's order.
type shapesRecord struct {
	ID            string        `json:"id"`
	Image         string        `json:"image"`
	Conversations []prompt.Turn `json:"conversations"`
}

// WriteShapes writes the coloured-shapes task: dir/images/NNNNNN.png (size×size pictures of one
// square, circle or triangle in one of six colours, of random size and position, on a plain light
// grey background) and dir/data.json, a LLaVA-format file whose image paths are relative to dir
// (Open(dir/data.json, "", …)). Each record asks "What colour is the square?" or "What shape is
// red?" (followed by ShapesInstruction) and answers with one capitalised word, so Accuracy scores an
// answer by exact match. Everything written depends only on (n, seed, size). data.json is written
// last, through a temporary file, so a directory holding it is complete.
func WriteShapes(dir string, n int, seed uint64, size int) error {
	if n <= 0 {
		return fmt.Errorf("shapes: %d records, want at least one", n)
	}
	if size < minShapesSize || size > maxShapesSize {
		return fmt.Errorf("shapes: picture size %d, want %d to %d", size, minShapesSize, maxShapesSize)
	}
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o755); err != nil {
		return fmt.Errorf("shapes: %w", err)
	}
	width := max(6, len(strconv.Itoa(n-1)))
	r := newStream(seed, shapesStream)
	var js bytes.Buffer
	enc := json.NewEncoder(&js)
	enc.SetEscapeHTML(false) // keep "<image>" readable
	js.WriteString("[\n")
	var pngBuf bytes.Buffer
	pngEnc := png.Encoder{CompressionLevel: png.BestCompression}
	for i := 0; i < n; i++ {
		s := newScene(r, size)
		name := fmt.Sprintf("%0*d.png", width, i)
		pngBuf.Reset()
		if err := pngEnc.Encode(&pngBuf, drawScene(s, size)); err != nil {
			return fmt.Errorf("shapes: image %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "images", name), pngBuf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("shapes: %w", err)
		}
		if i > 0 {
			js.WriteString(",\n")
		}
		rec := shapesRecord{ID: fmt.Sprintf("shapes-%0*d", width, i), Image: "images/" + name, Conversations: s.conversation()}
		if err := enc.Encode(rec); err != nil {
			return fmt.Errorf("shapes: record %d: %w", i, err)
		}
		js.Truncate(js.Len() - 1) // the encoder's newline
	}
	js.WriteString("\n]\n")
	tmp, err := os.CreateTemp(dir, ".data.json.*")
	if err != nil {
		return fmt.Errorf("shapes: %w", err)
	}
	if _, err := tmp.Write(js.Bytes()); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("shapes: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("shapes: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("shapes: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "data.json")); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("shapes: %w", err)
	}
	return nil
}

// Accuracy reports whether a generated answer matches the reference answer by its first word:
// both are reduced to their first run of letters and digits, lower-cased, so leading space, case
// and punctuation do not count ("  Red." and "red" match; "red-ish" counts as "red"; "The square is
// red" does not match "Red"). An empty reference matches nothing.
func Accuracy(answer, reference string) bool {
	ref := firstWord(reference)
	return ref != "" && firstWord(answer) == ref
}

// firstWord returns the first run of letters and digits of s, lower-cased.
func firstWord(s string) string {
	isWord := func(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }
	start := strings.IndexFunc(s, isWord)
	if start < 0 {
		return ""
	}
	s = s[start:]
	if end := strings.IndexFunc(s, func(r rune) bool { return !isWord(r) }); end >= 0 {
		s = s[:end]
	}
	return strings.ToLower(s)
}
