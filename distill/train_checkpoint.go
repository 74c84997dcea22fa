package distill

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/optim"
	"github.com/matsurgery/matsurgery/outdir"
)

// runDir is a training run's directory:
//
//	run.json                    what the run trains on (a resume must match it)
//	metrics.jsonl               one line per update (package trainlog)
//	checkpoints/step-00000040/  model.safetensors (the trainable tensors, F32),
//	                            optimizer.bin (AdamW's state), state.json
//	losses.png                  the loss curves, drawn at the end
//	final/                      the exported hybrid checkpoint
type runDir string

const (
	runFile        = "run.json"
	checkpointsDir = "checkpoints"
	stateFile      = "state.json"
	optimizerFile  = "optimizer.bin"
	checkpointPfx  = "step-"
)

func (d runDir) metrics() string { return filepath.Join(string(d), "metrics.jsonl") }

// runIdentity is what a resumed run must share with the run it continues
// for the continuation to be exact.
type runIdentity struct {
	Student         string  `json:"student"`
	Teacher         string  `json:"teacher,omitempty"`
	Data            string  `json:"data"`
	Seed            uint64  `json:"seed"`
	Batch           int     `json:"batch"`
	Accum           int     `json:"accum"`
	Steps           int     `json:"steps,omitempty"`
	Epochs          int     `json:"epochs,omitempty"`
	LR              float64 `json:"lr"`
	Schedule        string  `json:"schedule"`
	FreezeConnector bool    `json:"freeze_connector"`
	TrainAll        bool    `json:"train_all,omitempty"`
	Alpha           float64 `json:"alpha"`
	Beta            float64 `json:"beta"`
	Gamma           float64 `json:"gamma"`
	Temperature     float64 `json:"temperature"`
	MaskAnswers     bool    `json:"mask_answers"`
	MaxLength       int     `json:"max_length,omitempty"`
	Dropout         float64 `json:"dropout,omitempty"`
	// Precision is a device student's bf16 ("" for float32: a run may
	// move between the host and a device in float32).
	Precision string `json:"precision,omitempty"`
}

func identityOf(o TrainOptions) runIdentity {
	abs := func(p string) string {
		if p == "" {
			return ""
		}
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	id := runIdentity{Student: abs(o.Student), Teacher: abs(o.Teacher), Data: abs(o.Data), Seed: o.Seed,
		Batch: o.Batch, Accum: o.Accum, Steps: o.Steps, Epochs: o.Epochs, LR: o.LR, Schedule: o.Schedule.Kind,
		FreezeConnector: o.FreezeConnector, TrainAll: o.TrainAll, Alpha: o.Loss.Alpha, Beta: o.Loss.Beta, Gamma: o.Loss.Gamma,
		Temperature: o.Loss.Temperature, MaskAnswers: o.MaskAnswers, MaxLength: o.MaxLength, Dropout: o.Dropout}
	if o.Precision == PrecisionBF16 {
		id.Precision = o.Precision
	}
	return id
}

// prepare makes the run directory of a new run, or checks that a resumed
// run continues with the same settings.
func (d runDir) prepare(o TrainOptions) error {
	id := identityOf(o)
	want, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(string(d), runFile)
	old, err := os.ReadFile(path)
	switch {
	case err == nil && o.Resume:
		var got runIdentity
		if err := json.Unmarshal(old, &got); err != nil {
			return fmt.Errorf("distill: resume: %s: %w", path, err)
		}
		if got != id {
			return fmt.Errorf("distill: resume: %s was started with other settings (%s): a resumed run must use the same data, seed, batch, steps, learning rate, schedule and loss", path, diffIdentity(got, id))
		}
		return nil
	case err == nil:
		return fmt.Errorf("distill: %s already holds a run: use --resume to continue it, or another --out", d)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("distill: %w", err)
	}
	if ents, err := os.ReadDir(string(d)); err == nil && len(ents) > 0 {
		return fmt.Errorf("distill: run directory %s is not empty and holds no run", d)
	}
	if err := os.MkdirAll(filepath.Join(string(d), checkpointsDir), 0o755); err != nil {
		return fmt.Errorf("distill: %w", err)
	}
	return outdir.WriteFile(path, append(want, '\n'))
}

// diffIdentity names the fields that differ.
func diffIdentity(a, b runIdentity) string {
	var am, bm map[string]any
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	json.Unmarshal(ja, &am)
	json.Unmarshal(jb, &bm)
	var diffs []string
	for k, v := range am {
		if fmt.Sprint(bm[k]) != fmt.Sprint(v) {
			diffs = append(diffs, fmt.Sprintf("%s: %v, now %v", k, v, bm[k]))
		}
	}
	for k, v := range bm {
		if _, ok := am[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: unset, now %v", k, v))
		}
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "; ")
}

// checkpointState is a checkpoint's state.json. The data order is a pure
// function of (seed, batch plan, step) (package dataset's Batcher) and the
// dropout masks one of (seed, step, sample within the step, layer,
// branch), so the step and the seed are the whole of the data-order and
// random state; the metrics log is cut
// back to Step on resume.
type checkpointState struct {
	Step        int    `json:"step"`
	ElapsedNS   int64  `json:"elapsed_ns"`
	DataSeed    uint64 `json:"data_seed"`
	Batch       int    `json:"batch"`
	Accum       int    `json:"accum"`
	MetricsStep int    `json:"metrics_step"`
	Params      int    `json:"params"`
}

// save writes the checkpoint of step atomically and keeps the keep latest.
func (d runDir) save(st checkpointState, params []*Param, opt *optim.AdamW, keep int) (string, error) {
	step := st.Step
	root := filepath.Join(string(d), checkpointsDir)
	out := filepath.Join(root, fmt.Sprintf("%s%08d", checkpointPfx, step))
	tmp, err := outdir.Create(out)
	if err != nil {
		return "", fmt.Errorf("distill: checkpoint %s: %w", out, err)
	}
	defer tmp.Remove()
	specs := make([]formats.TensorSpec, len(params))
	for i, p := range params {
		shape := make([]int64, len(p.Shape))
		for j, s := range p.Shape {
			shape[j] = int64(s)
		}
		specs[i] = formats.TensorSpec{Name: p.Name, DType: formats.F32, Shape: shape}
	}
	w, err := formats.NewWriter(tmp.Path, specs, formats.WriterOptions{Metadata: map[string]string{"format": "pt"}})
	if err != nil {
		return "", fmt.Errorf("distill: checkpoint %s: %w", out, err)
	}
	defer w.Abort()
	var buf []byte
	for _, p := range params {
		buf = slices.Grow(buf[:0], 4*len(p.Data))[:4*len(p.Data)]
		for i, v := range p.Data {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
		}
		if err := w.WriteBytes(p.Name, buf); err != nil {
			return "", fmt.Errorf("distill: checkpoint %s: %w", out, err)
		}
	}
	if err := w.Commit(); err != nil {
		return "", fmt.Errorf("distill: checkpoint %s: %w", out, err)
	}
	if err := opt.SaveFile(filepath.Join(tmp.Path, optimizerFile)); err != nil {
		return "", fmt.Errorf("distill: checkpoint %s: %w", out, err)
	}
	st.MetricsStep, st.Params = step, len(params)
	js, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return "", err
	}
	if err := outdir.WriteFile(filepath.Join(tmp.Path, stateFile), append(js, '\n')); err != nil {
		return "", fmt.Errorf("distill: checkpoint %s: %w", out, err)
	}
	if err := tmp.Commit(); err != nil {
		return "", fmt.Errorf("distill: checkpoint %s: %w", out, err)
	}
	steps, err := d.checkpoints()
	if err != nil {
		return out, err
	}
	for len(steps) > keep && keep > 0 {
		if err := os.RemoveAll(filepath.Join(root, fmt.Sprintf("%s%08d", checkpointPfx, steps[0]))); err != nil {
			return out, fmt.Errorf("distill: removing an old checkpoint: %w", err)
		}
		steps = steps[1:]
	}
	return out, nil
}

// checkpoints lists the steps of the complete checkpoints, oldest first.
func (d runDir) checkpoints() ([]int, error) {
	ents, err := os.ReadDir(filepath.Join(string(d), checkpointsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("distill: %w", err)
	}
	var steps []int
	for _, e := range ents {
		var n int
		name := e.Name()
		if !e.IsDir() || !strings.HasPrefix(name, checkpointPfx) {
			continue
		}
		if _, err := fmt.Sscanf(name[len(checkpointPfx):], "%d", &n); err != nil || fmt.Sprintf("%s%08d", checkpointPfx, n) != name {
			continue
		}
		steps = append(steps, n)
	}
	slices.Sort(steps)
	return steps, nil
}

// loadLatest restores the latest checkpoint into params and opt. It returns
// nil when the run has none (a resume of a run that saved nothing yet
// starts over).
func (d runDir) loadLatest(params []*Param, opt *optim.AdamW) (*checkpointState, string, error) {
	steps, err := d.checkpoints()
	if err != nil || len(steps) == 0 {
		return nil, "", err
	}
	dir := filepath.Join(string(d), checkpointsDir, fmt.Sprintf("%s%08d", checkpointPfx, steps[len(steps)-1]))
	st, err := loadCheckpoint(dir, params, opt)
	if err != nil {
		return nil, "", fmt.Errorf("distill: resume from %s: %w", dir, err)
	}
	return st, dir, nil
}

func loadCheckpoint(dir string, params []*Param, opt *optim.AdamW) (*checkpointState, error) {
	js, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var st checkpointState
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("%s: %w", stateFile, err)
	}
	if st.Params != len(params) {
		return nil, fmt.Errorf("%s: %d trainable tensors, the student has %d (was the connector trained then and not now, or the reverse?)", stateFile, st.Params, len(params))
	}
	ck, err := formats.Open(dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	if ck.Len() != len(params) {
		return nil, fmt.Errorf("%d tensors saved, the student trains %d", ck.Len(), len(params))
	}
	vals := make([][]float32, len(params))
	for i, p := range params {
		info, ok := ck.Tensor(p.Name)
		if !ok {
			return nil, fmt.Errorf("tensor %s is missing", p.Name)
		}
		if info.DType != formats.F32 || info.NumElements() != int64(p.Len()) {
			return nil, fmt.Errorf("tensor %s: %s %v, want F32 %v", p.Name, info.DType, info.Shape, p.Shape)
		}
		if vals[i], err = ck.Float32(p.Name); err != nil {
			return nil, err
		}
	}
	// Only once everything has been read does anything change.
	if err := opt.LoadFile(filepath.Join(dir, optimizerFile)); err != nil {
		return nil, err
	}
	for i, p := range params {
		copy(p.Data, vals[i])
	}
	return &st, nil
}
