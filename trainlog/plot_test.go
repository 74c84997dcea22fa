package trainlog

import (
	"image"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeLog(t *testing.T, path string, recs []Record) {
	t.Helper()
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, recs)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func decodePNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return img
}

// inkColumns counts the image's non-white pixels, a coarse check that
// something was drawn.
func ink(img image.Image) int {
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if r < 0xf000 || g < 0xf000 || bl < 0xf000 {
				n++
			}
		}
	}
	return n
}

func TestPlotLosses(t *testing.T) {
	dir := t.TempDir()
	recs := syntheticRun(rand.New(rand.NewPCG(5, 6)), 600)
	recs[100].Losses.KL = math.NaN() // left out, not fatal
	logPath := filepath.Join(dir, "metrics.jsonl")
	writeLog(t, logPath, recs)

	pngPath := filepath.Join(dir, "losses.png")
	if err := PlotLosses(logPath, pngPath); err != nil {
		t.Fatal(err)
	}
	img := decodePNG(t, pngPath)
	if b := img.Bounds(); b.Dx() != 1200 || b.Dy() != 800 {
		t.Errorf("image is %d × %d, want 1200 × 800", b.Dx(), b.Dy())
	}
	if n := ink(img); n < 20000 {
		t.Errorf("only %d drawn pixels", n)
	}
	if os.Getenv("TRAINLOG_KEEP_PNG") != "" {
		data, _ := os.ReadFile(pngPath)
		os.WriteFile(os.Getenv("TRAINLOG_KEEP_PNG"), data, 0o644)
	}

	// Other sizes, raw curves, a forced linear scale; a short log.
	short := filepath.Join(dir, "short.jsonl")
	writeLog(t, short, recs[:3])
	for _, c := range []struct {
		log  string
		opt  PlotOptions
		w, h int
	}{
		{logPath, PlotOptions{Width: 640, Height: 480, LogY: LogYNever}, 640, 480},
		{logPath, PlotOptions{Width: 333, Height: 1001, Smoothing: 0.5, LogY: LogYAlways, Title: "run 7"}, 333, 1001},
		{short, PlotOptions{}, 1200, 800},
	} {
		out := filepath.Join(dir, "other.png")
		if err := PlotLossesWith(c.log, out, c.opt); err != nil {
			t.Fatalf("%+v: %v", c.opt, err)
		}
		if b := decodePNG(t, out).Bounds(); b.Dx() != c.w || b.Dy() != c.h {
			t.Errorf("%+v: image is %d × %d, want %d × %d", c.opt, b.Dx(), b.Dy(), c.w, c.h)
		}
	}
}

func TestPlotLossesErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.jsonl")
	os.WriteFile(empty, nil, 0o644)
	zeros := filepath.Join(dir, "zeros.jsonl")
	writeLog(t, zeros, []Record{{Step: 1}, {Step: 2}})
	good := filepath.Join(dir, "good.jsonl")
	writeLog(t, good, syntheticRun(rand.New(rand.NewPCG(7, 8)), 10))
	out := filepath.Join(dir, "out.png")
	cases := []struct {
		log  string
		opt  PlotOptions
		want string
	}{
		{empty, PlotOptions{}, "no records"},
		{zeros, PlotOptions{}, "every loss"},
		{filepath.Join(dir, "missing.jsonl"), PlotOptions{}, "no such file"},
		{good, PlotOptions{Smoothing: 1}, "smoothing 1"},
		{good, PlotOptions{Width: 10, Height: 10}, "10 × 10 pixels"},
	}
	for _, c := range cases {
		if err := PlotLossesWith(c.log, out, c.opt); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %+v: error %v, want one mentioning %q", filepath.Base(c.log), c.opt, err, c.want)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("a failed plot left a file")
	}
	if err := PlotLosses(good, filepath.Join(dir, "no-such-dir", "x.png")); err == nil {
		t.Error("plot into a missing directory succeeded")
	}
}
