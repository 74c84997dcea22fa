package inspect

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// MaxTextProblems bounds the problems WriteText lists (the JSON report has
// them all).
const MaxTextProblems = 40

// WriteText writes the report as aligned plain-text tables (no colours).
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	kv := &table{align: "ll"}
	kv.row("checkpoint", r.Path)
	kv.row("layout", r.layoutLine())
	if r.Synthetic != "" {
		kv.row("synthetic", "random weights from matsurgery synth ("+r.Synthetic+")")
	}
	if r.Family != "" {
		fam := r.Family
		if r.LLMName != "" {
			fam += " (" + r.LLMName + ")"
		}
		kv.row("family", fam)
	}
	if t := r.Text; t != nil {
		head := "untied head"
		if t.TieWordEmbeddings {
			head = "tied head"
		}
		kv.row("text", fmt.Sprintf("hidden %d, %d layers, %d heads, %d KV heads, head_dim %d, intermediate %d, vocab %d, %s",
			t.HiddenSize, t.NumLayers, t.NumHeads, t.NumKVHeads, t.HeadDim, t.IntermediateSize, t.VocabSize, head))
	}
	if v := r.Vision; v != nil {
		name := r.VisionName
		if name == "" {
			name = "vision tower"
		}
		kv.row("vision", fmt.Sprintf("%s: hidden %d, %d layers, %d heads, intermediate %d, image %d, patch %d, %d patches",
			name, v.HiddenSize, v.NumLayers, v.NumHeads, v.IntermediateSize, v.ImageSize, v.PatchSize, v.NumPatches))
	}
	if r.Connector != "" {
		kv.row("connector", r.Connector)
	}
	kv.write(&b)
	b.WriteByte('\n')

	ct := &table{align: "lrrr"}
	ct.row("component", "tensors", "parameters", "share")
	for _, c := range r.Components {
		if c.TiedTo != "" {
			ct.row(c.Component, "0", "tied", "-", "shares "+c.TiedTo)
			continue
		}
		ct.row(c.Component, strconv.Itoa(c.Tensors), group(c.Params), percent(c.Params, r.TotalParams))
	}
	ct.row("total", strconv.Itoa(r.Tensors), group(r.TotalParams), "100.0%", "("+shortCount(r.TotalParams)+")")
	ct.write(&b)
	b.WriteByte('\n')

	dt := &table{align: "lrrr"}
	dt.row("dtype", "tensors", "parameters", "bytes")
	for _, d := range r.DTypes {
		dt.row(d.DType, strconv.Itoa(d.Tensors), group(d.Params), humanBytes(d.Bytes))
	}
	dt.write(&b)
	b.WriteByte('\n')

	ft := &table{align: "lrr"}
	ft.row("file", "tensors", "bytes")
	for _, f := range r.Files {
		n := ""
		if f.Tensors > 0 {
			n = strconv.Itoa(f.Tensors)
		}
		ft.row(f.Name, n, humanBytes(f.Bytes))
	}
	ft.row("total", "", humanBytes(r.FileBytes))
	ft.write(&b)

	if len(r.Layers) > 0 {
		b.WriteByte('\n')
		lt := &table{align: "rlrlrrrrrrr"}
		head := []string{"layer", "mixer", "parameters", "dtype"}
		if r.Hybrid {
			head = append(head, "d_inner", "d_xb", "nheads", "headdim", "conv_dim", "kernel", "in_proj_rows")
		}
		lt.row(head...)
		for _, l := range r.Layers {
			cells := []string{strconv.Itoa(l.Index), l.Mixer, group(l.Params), strings.Join(l.DTypes, "+")}
			if m := l.Mamba; m != nil {
				cells = append(cells, strconv.Itoa(m.DInner), strconv.Itoa(m.DXB), strconv.Itoa(m.NHeads), strconv.Itoa(m.HeadDim),
					strconv.Itoa(m.ConvDim), strconv.Itoa(m.ConvKernel), strconv.Itoa(m.InProjRows))
			}
			lt.row(cells...)
		}
		lt.write(&b)
	}

	b.WriteByte('\n')
	if len(r.Problems) == 0 {
		b.WriteString("problems: none\n")
	} else {
		errs := r.Errors()
		fmt.Fprintf(&b, "problems: %s, %s\n", plural(errs, "error"), plural(len(r.Problems)-errs, "warning"))
		pt := &table{align: "lll"}
		for i, p := range r.Problems {
			if i == MaxTextProblems {
				break
			}
			where := p.Tensor
			if where == "" {
				where = p.File
			} else if p.File != "" {
				where += " (" + p.File + ")"
			}
			if where == "" && p.Layer != nil {
				where = fmt.Sprintf("layer %d", *p.Layer)
			}
			pt.row("  "+p.Severity, where, p.Message)
		}
		pt.write(&b)
		if n := len(r.Problems) - MaxTextProblems; n > 0 {
			fmt.Fprintf(&b, "  … and %d more (all of them are in the JSON report)\n", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) layoutLine() string {
	switch {
	case r.Layout == "legacy":
		return "legacy bczhou/TinyLLaVA (model.*, model.mm_projector.*): not supported"
	case r.Hybrid:
		src := "mamba_config.json"
		if !r.MambaConfig {
			src = "no mamba_config.json"
		}
		return fmt.Sprintf("TinyLLaVA_Factory hybrid: %d of %d decoder layers are Mamba-2 (%s): %s",
			len(r.MambaLayers), len(r.Layers), src, ints(r.MambaLayers))
	}
	return "TinyLLaVA_Factory teacher (every decoder layer is attention)"
}

// table aligns cells in columns separated by two spaces; align holds 'l' or
// 'r' per column (cells beyond it are left-aligned).
type table struct {
	align string
	rows  [][]string
}

func (t *table) row(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) write(b *strings.Builder) {
	var width []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	for _, r := range t.rows {
		var line strings.Builder
		for i, c := range r {
			if i > 0 {
				line.WriteString("  ")
			}
			pad := strings.Repeat(" ", width[i]-len([]rune(c)))
			last := i == len(r)-1
			if i < len(t.align) && t.align[i] == 'r' {
				line.WriteString(pad + c)
			} else if last {
				line.WriteString(c)
			} else {
				line.WriteString(c + pad)
			}
		}
		b.WriteString(strings.TrimRight(line.String(), " "))
		b.WriteByte('\n')
	}
}

// group writes n with thousands separators: 3,217,417,280.
func group(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// shortCount writes a parameter count as 3.22 B, 471.6 M, 12.3 K.
func shortCount(n int64) string {
	f := float64(n)
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f B", f/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f M", f/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f K", f/1e3)
	}
	return strconv.FormatInt(n, 10)
}

// humanBytes writes a size in decimal units, as Hugging Face lists files.
func humanBytes(n int64) string {
	f := float64(n)
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f GB", f/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2f MB", f/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", f/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

func percent(part, total int64) string {
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(part)/float64(total))
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
