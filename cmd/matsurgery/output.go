package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// printJSON writes v as indented JSON.
func (g *Globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// say prints a human line unless --quiet or --json.
func (g *Globals) say(format string, args ...any) {
	if g.Quiet || g.JSON {
		return
	}
	fmt.Fprintf(g.stdout, format, args...)
}

func (g *Globals) table() *tabwriter.Writer {
	return tabwriter.NewWriter(g.stdout, 0, 2, 2, ' ', 0)
}

// bar is a byte progress bar on a terminal's stderr, silent otherwise.
type bar struct {
	g *Globals
	p *progressbar.ProgressBar
}

func (g *Globals) progress() *bar { return &bar{g: g} }

func (b *bar) Start(label string, total int64) {
	if b.g.Quiet || b.g.JSON || !isTerminal(b.g.stderr) {
		return
	}
	b.p = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(b.g.stderr),
		progressbar.OptionSetDescription(label),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionClearOnFinish(),
	)
}

func (b *bar) Add(n int64) {
	if b.p != nil {
		b.p.Add64(n)
	}
}

func (b *bar) Finish() {
	if b.p != nil {
		b.p.Finish()
		b.p = nil
	}
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func humanCount(n int64) string {
	switch {
	case n >= 1e9 || n <= -1e9:
		return fmt.Sprintf("%.3fB", float64(n)/1e9)
	case n >= 1e6 || n <= -1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	case n >= 1e3 || n <= -1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
