package distill

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/outdir"
	"github.com/matsurgery/matsurgery/trainlog"
)

// provenanceName is the file convert writes its provenance to; the export
// adds a "distill" record to it.
const provenanceName = "matsurgery.json"

// ExportInfo is the "distill" record of an export's matsurgery.json.
type ExportInfo struct {
	Version string     `json:"version,omitempty"`
	Teacher string     `json:"teacher,omitempty"`
	Data    string     `json:"data,omitempty"`
	Steps   int        `json:"steps"`
	Seed    uint64     `json:"seed"`
	Loss    LossConfig `json:"loss"`
	// TrainAll: every parameter trained (a plain checkpoint fine-tuned).
	TrainAll bool       `json:"train_all,omitempty"`
	Final    LossValues `json:"final_losses"`
	Date     string     `json:"date,omitempty"`
}

// LossValues are an update's loss terms (trainlog.Losses with JSON names).
type LossValues struct {
	KL    float64 `json:"kl"`
	L2    float64 `json:"l2"`
	CE    float64 `json:"ce"`
	Total float64 `json:"total"`
}

func lossValues(l trainlog.Losses) LossValues {
	return LossValues{KL: l.KL, L2: l.L2, CE: l.CE, Total: l.Total}
}

// MarshalJSON writes the loss configuration with its distance by name.
func (c LossConfig) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Alpha       float64 `json:"alpha"`
		Beta        float64 `json:"beta"`
		Gamma       float64 `json:"gamma"`
		Temperature float64 `json:"temperature"`
		Distance    string  `json:"distance"`
	}{c.Alpha, c.Beta, c.Gamma, c.Temperature, c.Distance.String()})
}

// Export writes the student as a hybrid checkpoint in out, in exactly the
// form convert wrote the student's checkpoint: the same tensors, names,
// dtypes, shapes and shards, the trainable ones replaced by their trained
// values (rounded to the stored dtype), the same config.json,
// mamba_config.json, tokenizer and side files, and matsurgery.json with a
// "distill" record added. out is written atomically (package outdir) and
// replaced when it exists.
func Export(s *Student, out string, info ExportInfo) error {
	if err := export(s.Dir, s.params, out, info); err != nil {
		return fmt.Errorf("distill: export %s: %w", out, err)
	}
	return nil
}

// export writes the checkpoint in dir with params' values in place of its
// tensors of the same names (the host Student's, or a device student's
// host mirrors).
func export(dir string, params []*Param, out string, info ExportInfo) error {
	ck, err := formats.Open(dir)
	if err != nil {
		return err
	}
	defer ck.Close()
	trained := make(map[string]*Param, len(params))
	for _, p := range params {
		trained[p.Name] = p
	}
	// Tensors in their files' order, file by file, so the shards come out
	// as the input's.
	byFile := map[string][]formats.TensorInfo{}
	for _, t := range ck.Tensors() {
		byFile[t.File] = append(byFile[t.File], t)
	}
	var specs []formats.TensorSpec
	var order []formats.TensorInfo
	var lengths []int
	for _, f := range ck.Files {
		ts := byFile[f]
		slices.SortFunc(ts, func(a, b formats.TensorInfo) int { return int(a.Offset - b.Offset) })
		for _, t := range ts {
			specs = append(specs, formats.TensorSpec{Name: t.Name, DType: t.DType, Shape: t.Shape, Bytes: t.Size})
			order = append(order, t)
		}
		if len(ts) > 0 {
			lengths = append(lengths, len(ts))
		}
	}
	for name, p := range trained {
		t, ok := ck.Tensor(name)
		if !ok {
			return fmt.Errorf("trained tensor %s is not in %s", name, dir)
		}
		if t.NumElements() != int64(p.Len()) {
			return fmt.Errorf("trained tensor %s: %d values, %s holds %d", name, p.Len(), dir, t.NumElements())
		}
	}
	tmp, err := outdir.Create(out)
	if err != nil {
		return err
	}
	defer tmp.Remove()
	opts := formats.WriterOptions{Metadata: ck.Metadata}
	if len(ck.Files) > 1 {
		opts.ShardLengths = lengths
	}
	w, err := formats.NewWriter(tmp.Path, specs, opts)
	if err != nil {
		return err
	}
	defer w.Abort()
	for _, t := range order {
		p, ok := trained[t.Name]
		if !ok {
			sec, err := ck.Section(t.Name)
			if err != nil {
				return err
			}
			if err := w.Write(t.Name, sec); err != nil {
				return fmt.Errorf("tensor %s: %w", t.Name, err)
			}
			continue
		}
		buf := make([]byte, t.Size)
		if err := formats.EncodeFloat32(t.DType, p.Data, buf); err != nil {
			return fmt.Errorf("tensor %s: %w", t.Name, err)
		}
		if err := w.WriteBytes(t.Name, buf); err != nil {
			return fmt.Errorf("tensor %s: %w", t.Name, err)
		}
	}
	if err := w.Commit(); err != nil {
		return err
	}
	if _, err := outdir.CopySideFiles(dir, tmp.Path, provenanceName); err != nil {
		return err
	}
	if err := writeProvenance(dir, tmp.Path, info); err != nil {
		return err
	}
	return tmp.Commit()
}

// writeProvenance writes the student's matsurgery.json (or a new one) with
// the "distill" record set.
func writeProvenance(src, dst string, info ExportInfo) error {
	prov := map[string]any{}
	b, err := os.ReadFile(filepath.Join(src, provenanceName))
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &prov); err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(src, provenanceName), err)
		}
	case os.IsNotExist(err):
		prov["tool"] = "matsurgery"
	default:
		return err
	}
	if info.Date == "" {
		info.Date = time.Now().UTC().Format(time.RFC3339)
	}
	prov["distill"] = info
	out, err := json.MarshalIndent(prov, "", "  ")
	if err != nil {
		return err
	}
	return outdir.WriteFile(filepath.Join(dst, provenanceName), append(out, '\n'))
}
