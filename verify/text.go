package verify

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// WriteText prints the report as a plain table per layer and a summary.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "hybrid   %s\n", r.Hybrid)
	if r.Teacher != "" {
		fmt.Fprintf(w, "teacher  %s\n", r.Teacher)
	}
	fmt.Fprintf(w, "device   %s   family %s   seq-len %d   batch %d   chunk %d   seed %d\n\n", r.Device, r.Family, r.SeqLen, r.Batch, r.Chunk, r.Seed)
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "layer\tidentity seq\tidentity chunk\tscan chunk/seq\tdist rel.err\tdist cosine\tintegrity\tresult")
	for _, l := range r.Layers {
		dist, cos := "-", "-"
		if l.DistanceRelErr != nil {
			dist, cos = fmt.Sprintf("%.3g", *l.DistanceRelErr), fmt.Sprintf("%.3f", *l.DistanceCosine)
		}
		integ := "ok"
		if !l.Integrity {
			integ = "FAIL"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Layer, check(l.IdentitySeq, l.Integrity), check(l.IdentityChunk, l.Integrity),
			check(l.Scan, l.Integrity), dist, cos, integ, passFail(l.Pass))
	}
	tw.Flush()
	for _, l := range r.Layers {
		for _, p := range l.Problems {
			fmt.Fprintf(w, "  layer %d: %s\n", l.Layer, p)
		}
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
	fmt.Fprintf(w, "\nidentity source: %s; tolerances: identity %s, scan %.0e\n", r.identitySource(), r.identityTol(), scanTol)
	fmt.Fprintf(w, "integrity: %d tensors (%s) read", r.Tensors, bytesText(r.Bytes))
	if r.Teacher != "" {
		fmt.Fprintf(w, ", %d identical to the teacher", r.Identical)
	}
	fmt.Fprintln(w)
	var stages []string
	for k := range r.Stages {
		stages = append(stages, k)
	}
	sort.Strings(stages)
	var parts []string
	for _, k := range stages {
		parts = append(parts, fmt.Sprintf("%s %.2fs", k, r.Stages[k]))
	}
	fmt.Fprintf(w, "time: %s\n", strings.Join(parts, ", "))
	fmt.Fprintf(w, "verdict: %s (%d Mamba layers)\n", passFail(r.Pass), len(r.Layers))
}

// FirstFailure names the first failing layer and check.
func (r *Report) FirstFailure() string {
	if len(r.Problems) > 0 {
		return r.Problems[0]
	}
	for _, l := range r.Layers {
		switch {
		case len(l.Problems) > 0:
			return fmt.Sprintf("layer %d: %s", l.Layer, l.Problems[0])
		case !l.IdentitySeq.Pass:
			return fmt.Sprintf("layer %d: identity (sequential) relative error %.3g > %.0e", l.Layer, l.IdentitySeq.RelErr, l.IdentitySeq.Tol)
		case !l.IdentityChunk.Pass:
			return fmt.Sprintf("layer %d: identity (chunked) relative error %.3g > %.0e", l.Layer, l.IdentityChunk.RelErr, l.IdentityChunk.Tol)
		case !l.Scan.Pass:
			return fmt.Sprintf("layer %d: scan consistency relative error %.3g > %.0e", l.Layer, l.Scan.RelErr, l.Scan.Tol)
		}
	}
	if len(r.Layers) == 0 {
		return "no Mamba layers"
	}
	return "unknown"
}

func (r *Report) identitySource() string {
	if len(r.Layers) > 0 && r.Layers[0].IdentitySource != "" {
		return r.Layers[0].IdentitySource
	}
	return "-"
}

func (r *Report) identityTol() string {
	if len(r.Layers) > 0 {
		return fmt.Sprintf("%.0e", r.Layers[0].IdentitySeq.Tol)
	}
	return "-"
}

func check(c Check, ran bool) string {
	if !ran {
		return "-"
	}
	mark := "ok"
	if !c.Pass {
		mark = "FAIL"
	}
	return fmt.Sprintf("%.2e %s", c.RelErr, mark)
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d B", n)
}
