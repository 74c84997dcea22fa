package trainlog

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// LogY chooses the loss axis's scale.
type LogY int

const (
	// LogYAuto uses a log scale when the plotted values span more than
	// wideRange (largest over smallest positive value).
	LogYAuto LogY = iota
	LogYAlways
	LogYNever
)

// wideRange is the span of values above which LogYAuto picks a log scale.
const wideRange = 50

// PlotOptions tune PlotLossesWith.
type PlotOptions struct {
	Width, Height int // pixels; 0 takes 1200 × 800
	// Smoothing is the weight w of an exponential moving average drawn over
	// the raw curves (TensorBoard's, debiased: s_t = w·s_{t−1} + (1−w)·x_t,
	// divided by 1 − wᵗ). 0 draws the raw curves alone; it must be below 1.
	Smoothing float64
	LogY      LogY
	Title     string // "" takes "training losses"
}

// PlotLosses draws the metrics log at jsonlPath into a PNG at pngPath with
// the default options: 1200 × 800 pixels, smoothing 0.9 from 50 records
// on (none below), a log loss axis when the values span a wide range.
func PlotLosses(jsonlPath, pngPath string) error {
	recs, err := Read(jsonlPath)
	if err != nil {
		return err
	}
	opt := PlotOptions{}
	if len(recs) >= 50 {
		opt.Smoothing = 0.9
	}
	return plotRecords(recs, jsonlPath, pngPath, opt)
}

// PlotLossesWith is PlotLosses with the given options.
func PlotLossesWith(jsonlPath, pngPath string, opt PlotOptions) error {
	recs, err := Read(jsonlPath)
	if err != nil {
		return err
	}
	return plotRecords(recs, jsonlPath, pngPath, opt)
}

// series is one curve: its name, colour and the value it reads.
type series struct {
	name  string
	color color.NRGBA
	value func(Record) float64
}

var lossSeries = []series{
	{"total", color.NRGBA{0x20, 0x20, 0x20, 0xff}, func(r Record) float64 { return r.Losses.Total }},
	{"KL", color.NRGBA{0x1f, 0x77, 0xb4, 0xff}, func(r Record) float64 { return r.Losses.KL }},
	{"L2 (layers)", color.NRGBA{0xe6, 0x6a, 0x00, 0xff}, func(r Record) float64 { return r.Losses.L2 }},
	{"CE", color.NRGBA{0x2c, 0xa0, 0x2c, 0xff}, func(r Record) float64 { return r.Losses.CE }},
}

var (
	gradSeries = series{"grad norm", color.NRGBA{0x94, 0x67, 0xbd, 0xff}, func(r Record) float64 { return r.GradNorm }}
	lrSeries   = series{"learning rate", color.NRGBA{0x8c, 0x56, 0x4b, 0xff}, func(r Record) float64 { return r.LR }}
)

func plotRecords(recs []Record, jsonlPath, pngPath string, opt PlotOptions) error {
	if len(recs) == 0 {
		return fmt.Errorf("plot losses: %s holds no records", jsonlPath)
	}
	if !(opt.Smoothing >= 0 && opt.Smoothing < 1) {
		return fmt.Errorf("plot losses: smoothing %g is outside [0, 1)", opt.Smoothing)
	}
	if opt.Width == 0 && opt.Height == 0 {
		opt.Width, opt.Height = 1200, 800
	}
	if opt.Width < 200 || opt.Height < 200 || opt.Width > 16384 || opt.Height > 16384 {
		return fmt.Errorf("plot losses: %d × %d pixels: each side must be 200 to 16384", opt.Width, opt.Height)
	}
	if opt.Title == "" {
		opt.Title = "training losses"
	}

	var losses []series
	for _, s := range lossSeries {
		if anyNonZero(recs, s.value) {
			losses = append(losses, s)
		}
	}
	if len(losses) == 0 {
		return fmt.Errorf("plot losses: every loss in %s is zero", jsonlPath)
	}
	title := opt.Title
	if opt.Smoothing > 0 {
		title += fmt.Sprintf(" (smoothed, weight %g)", opt.Smoothing)
	}
	panels := []*plot.Plot{linePanel(recs, losses, title, "loss", opt.LogY, opt.Smoothing, true)}
	weights := []float64{3}
	if anyNonZero(recs, gradSeries.value) {
		panels = append(panels, linePanel(recs, []series{gradSeries}, "", "grad norm", LogYAuto, opt.Smoothing, false))
		weights = append(weights, 1)
	}
	if anyNonZero(recs, lrSeries.value) {
		panels = append(panels, linePanel(recs, []series{lrSeries}, "", "lr", LogYNever, 0, false))
		weights = append(weights, 1)
	}
	panels[len(panels)-1].X.Label.Text = "step"

	const dpi = 96
	c := vgimg.NewWith(
		vgimg.UseWH(vg.Length(opt.Width)/dpi*vg.Inch, vg.Length(opt.Height)/dpi*vg.Inch),
		vgimg.UseDPI(dpi),
	)
	stack(draw.New(c), panels, weights)
	return writePNG(pngPath, vgimg.PngCanvas{Canvas: c})
}

func anyNonZero(recs []Record, value func(Record) float64) bool {
	for _, r := range recs {
		if v := value(r); v != 0 && !math.IsNaN(v) {
			return true
		}
	}
	return false
}

// linePanel plots the series against the step. With smoothing, the raw
// curves are drawn faint and the smoothed ones over them. Points that the
// scale cannot show (non-finite, or not positive on a log scale) are left
// out.
func linePanel(recs []Record, ss []series, title, ylabel string, logY LogY, smoothing float64, legend bool) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	p.Add(plotter.NewGrid())
	useLog := logY == LogYAlways || (logY == LogYAuto && wide(recs, ss))
	if useLog {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	keep := func(v float64) bool {
		return !math.IsNaN(v) && !math.IsInf(v, 0) && (!useLog || v > 0)
	}
	// Raw curves first, smoothed ones over them, and the first series (the
	// total, which often runs close to its largest term) dashed on top.
	var mains []*plotter.Line
	for _, s := range ss {
		raw := make(plotter.XYs, 0, len(recs))
		for _, r := range recs {
			if v := s.value(r); keep(v) {
				raw = append(raw, plotter.XY{X: float64(r.Step), Y: v})
			}
		}
		main := raw
		if smoothing > 0 && len(raw) > 0 {
			faint := s.color
			faint.A = 0x50
			p.Add(line(raw, faint, 0.8))
			main = ema(raw, smoothing)
		}
		mains = append(mains, line(main, s.color, 1.6))
	}
	if len(mains) > 1 {
		mains[0].Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
		mains[0].Width = vg.Points(1.3)
	}
	for i := len(mains) - 1; i >= 0; i-- {
		if len(mains[i].XYs) > 0 {
			p.Add(mains[i])
		}
	}
	for i, l := range mains {
		if legend && len(l.XYs) > 0 {
			p.Legend.Add(ss[i].name, l)
		}
	}
	p.Legend.Top = true
	return p
}

func line(xys plotter.XYs, c color.Color, width vg.Length) *plotter.Line {
	l := &plotter.Line{XYs: xys, LineStyle: plotter.DefaultLineStyle}
	l.Color = c
	l.Width = vg.Points(float64(width))
	return l
}

// wide reports whether the positive finite values of the series span more
// than wideRange.
func wide(recs []Record, ss []series) bool {
	lo, hi := math.Inf(1), 0.0
	for _, s := range ss {
		for _, r := range recs {
			if v := s.value(r); v > 0 && !math.IsInf(v, 1) {
				lo, hi = min(lo, v), max(hi, v)
			}
		}
	}
	return hi > 0 && hi/lo > wideRange
}

// ema is the debiased exponential moving average of the points' Y.
func ema(xys plotter.XYs, w float64) plotter.XYs {
	out := make(plotter.XYs, len(xys))
	var acc, weight float64
	for i, xy := range xys {
		acc = w*acc + (1-w)*xy.Y
		weight = w*weight + (1 - w)
		out[i] = plotter.XY{X: xy.X, Y: acc / weight}
	}
	return out
}

// stack draws the panels top to bottom with heights in proportion to
// weights, their data areas aligned left and right.
func stack(dc draw.Canvas, panels []*plot.Plot, weights []float64) {
	var total float64
	for _, w := range weights {
		total += w
	}
	height := float64(dc.Max.Y - dc.Min.Y)
	canvases := make([]draw.Canvas, len(panels))
	top := 0.0
	var left, right vg.Length
	for i := range panels {
		h := height * weights[i] / total
		canvases[i] = draw.Crop(dc, 0, 0, vg.Length(height-top-h), vg.Length(-top))
		top += h
		data := panels[i].DataCanvas(canvases[i])
		left = max(left, data.Min.X-canvases[i].Min.X)
		right = max(right, canvases[i].Max.X-data.Max.X)
	}
	for i, p := range panels {
		data := p.DataCanvas(canvases[i])
		c := draw.Crop(canvases[i], left-(data.Min.X-canvases[i].Min.X), (canvases[i].Max.X-data.Max.X)-right, 0, 0)
		p.Draw(c)
	}
}

// writePNG writes the image next to path and renames it into place, so a
// viewer never reads half a file.
func writePNG(path string, png vgimg.PngCanvas) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("plot losses: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("plot losses: %w", err)
	}
	if _, err := png.WriteTo(f); err != nil {
		return fmt.Errorf("plot losses: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plot losses: write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("plot losses: %w", err)
	}
	return nil
}
