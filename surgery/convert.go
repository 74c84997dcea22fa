package surgery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/edsrzf/mmap-go"
	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/layout"
	"github.com/matsurgery/matsurgery/outdir"
	"github.com/matsurgery/matsurgery/progress"
)

// ProvenanceName is the provenance file written beside the hybrid.
const ProvenanceName = "matsurgery.json"

// Provenance records how a hybrid was made.
type Provenance struct {
	Tool       string            `json:"tool"`
	Version    string            `json:"version"`
	Teacher    string            `json:"teacher"`
	TeacherSHA map[string]string `json:"teacher_sha256"`
	Family     string            `json:"family"`
	Plan       layout.Plan       `json:"plan"`
	NewLayers  []int             `json:"new_layers"`
	Seed       uint64            `json:"seed"`
	Init       InitRecord        `json:"init"`
	Parent     json.RawMessage   `json:"parent,omitempty"`
}

// InitRecord is the initialisation as recorded in the provenance file.
type InitRecord struct {
	Mapping   map[string]string `json:"mapping"`
	DtMin     float64           `json:"dt_min"`
	DtMax     float64           `json:"dt_max"`
	DtFloor   float64           `json:"dt_floor"`
	AMin      float64           `json:"a_min"`
	AMax      float64           `json:"a_max"`
	ConvBound float64           `json:"conv_bound"`
	KeepBias  bool              `json:"keep_bias"`
	DType     string            `json:"dtype"`
}

// Result of a conversion.
type Result struct {
	Summary
	Files    []string           `json:"files"`
	Warnings []string           `json:"warnings,omitempty"`
	Stages   map[string]float64 `json:"stage_seconds"` // where the time went (hashing overlaps the rest)
}

// Run executes the job: it writes the hybrid into a temporary sibling of
// Out and renames it into place when everything is complete. On any error
// nothing is left at Out (beyond what was there before) and no temporary remains.
func (j *Job) Run(ctx context.Context) (res *Result, err error) {
	o := j.Opts
	if o.Out == "" {
		return nil, fmt.Errorf("no output directory given")
	}
	if err := outdir.Check(o.Out, o.Force, o.Teacher); err != nil {
		return nil, err
	}
	prog := progress.Or(o.Progress)
	dir, err := outdir.Create(o.Out)
	if err != nil {
		return nil, err
	}
	defer dir.Remove()
	tmp := dir.Path

	// Hash the teacher's files alongside the copy (one more core's work).
	stages := map[string]float64{}
	var hashes map[string]string
	var hashErr error
	var hashSeconds float64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.Now()
		hashes, hashErr = hashTeacher(ctx, o.Teacher)
		hashSeconds = time.Since(t).Seconds()
	}()
	defer wg.Wait()

	t0 := time.Now()
	if err := j.writeTensors(ctx, tmp, prog, stages); err != nil {
		return nil, err
	}
	stages["tensors"] = time.Since(t0).Seconds()
	warnings, err := outdir.CopySideFiles(o.Teacher, tmp, formats.MambaConfigName, ProvenanceName)
	if err != nil {
		return nil, err
	}
	if err := outdir.WriteFile(filepath.Join(tmp, formats.MambaConfigName), j.MambaConfig().Marshal()); err != nil {
		return nil, err
	}
	t0 = time.Now()
	wg.Wait()
	stages["waiting for the hash"] = time.Since(t0).Seconds()
	stages["sha256 of the teacher (concurrent)"] = hashSeconds
	if hashErr != nil {
		return nil, hashErr
	}
	prov := j.provenance(hashes)
	pb, _ := json.MarshalIndent(prov, "", "  ")
	if err := outdir.WriteFile(filepath.Join(tmp, ProvenanceName), append(pb, '\n')); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := dir.Commit(); err != nil {
		return nil, err
	}
	res = &Result{Summary: j.Summary(), Warnings: warnings, Stages: stages}
	entries, _ := os.ReadDir(o.Out)
	for _, e := range entries {
		res.Files = append(res.Files, e.Name())
	}
	return res, nil
}

func (j *Job) writeTensors(ctx context.Context, dir string, prog progress.Reporter, stages map[string]float64) error {
	opts := formats.WriterOptions{Metadata: map[string]string{"format": "pt"}}
	switch {
	case j.Opts.ShardSize > 0:
		opts.MaxShardSize = j.Opts.ShardSize
	case len(j.Teacher.Files) > 1:
		for _, g := range j.Groups {
			if len(g) > 0 {
				opts.ShardLengths = append(opts.ShardLengths, len(g))
			}
		}
	}
	w, err := formats.NewWriter(dir, j.Specs, opts)
	if err != nil {
		return err
	}
	defer w.Abort()
	var total int64
	for _, s := range j.Specs {
		total += numel(s.Shape) * int64(s.DType.Size())
	}
	prog.Start("convert", total)
	defer prog.Finish()

	added := map[string]int{} // mixer tensor → layer
	var order []int           // layers in the order their mixers are written
	for _, a := range j.Added {
		l := layout.LayerOf(a.Name)
		if _, seen := added[a.Name]; !seen && (len(order) == 0 || order[len(order)-1] != l) {
			order = append(order, l)
		}
		added[a.Name] = l
	}
	// Mixers are built one ahead, on another core, while tensors are copied.
	type built struct {
		layer int
		m     map[string]*initmap.Tensor
		err   error
		secs  float64
	}
	ahead := make(chan built, 1)
	stop := make(chan struct{})
	var builder sync.WaitGroup
	defer func() { close(stop); builder.Wait() }() // never outlive the job's checkpoint
	builder.Add(1)
	go func() {
		defer builder.Done()
		defer close(ahead)
		for _, l := range order {
			if ctx.Err() != nil {
				return
			}
			t := time.Now()
			m, err := j.buildMixer(l)
			select {
			case ahead <- built{l, m, err, time.Since(t).Seconds()}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var mixer map[string]*initmap.Tensor
	mixerLayer := -1
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, s := range j.Specs {
		if err := ctx.Err(); err != nil {
			return err
		}
		size := numel(s.Shape) * int64(s.DType.Size())
		if l, ok := added[s.Name]; ok {
			if l != mixerLayer {
				t := time.Now()
				b, ok := <-ahead
				if !ok && ctx.Err() != nil {
					return ctx.Err()
				}
				if !ok || b.layer != l {
					return fmt.Errorf("internal: mixer of layer %d built out of order", l)
				}
				if b.err != nil {
					return b.err
				}
				stages["mixer init (concurrent)"] += b.secs
				stages["waiting for a mixer"] += time.Since(t).Seconds()
				mixer, mixerLayer = b.m, l
			}
			t := mixer[strings.TrimPrefix(s.Name, layout.MambaPrefix(l))]
			if err := w.WriteBytes(s.Name, t.Data); err != nil {
				return err
			}
			prog.Add(size)
			continue
		}
		info, _ := j.Teacher.Tensor(s.Name)
		f := files[info.File]
		if f == nil {
			if f, err = os.Open(info.File); err != nil {
				return err
			}
			files[info.File] = f
		}
		// A LimitedReader over the *os.File lets the kernel copy (copy_file_range).
		if _, err := f.Seek(info.Offset, io.SeekStart); err != nil {
			return fmt.Errorf("%s: tensor %s: %w", info.File, s.Name, err)
		}
		if err := w.Write(s.Name, &io.LimitedReader{R: f, N: info.Size}); err != nil {
			return fmt.Errorf("%s: tensor %s: %w", info.File, s.Name, err)
		}
		prog.Add(size)
	}
	t := time.Now()
	err = w.Commit()
	stages["commit (fsync)"] = time.Since(t).Seconds()
	return err
}

func (j *Job) buildMixer(l int) (map[string]*initmap.Tensor, error) {
	read := func(p layout.Part, suffix string) (*initmap.Tensor, error) {
		name := j.Desc.LayerTensor(l, p, suffix)
		info, ok := j.Teacher.Tensor(name)
		if !ok {
			if suffix == "bias" {
				return nil, nil
			}
			return nil, fmt.Errorf("%s: missing tensor %s", j.Opts.Teacher, name)
		}
		data, err := j.Teacher.Raw(name)
		if err != nil {
			return nil, err
		}
		return &initmap.Tensor{DType: info.DType, Shape: info.Shape, Data: data}, nil
	}
	var att initmap.Attention
	var err error
	for _, x := range []struct {
		p   layout.Part
		w   **initmap.Tensor
		b   **initmap.Tensor
		key string
	}{{layout.AttnQ, &att.Q, &att.QBias, "q"}, {layout.AttnK, &att.K, &att.KBias, "k"}, {layout.AttnV, &att.V, &att.VBias, "v"}, {layout.AttnO, &att.O, &att.OBias, "o"}} {
		if *x.w, err = read(x.p, "weight"); err != nil {
			return nil, err
		}
		if j.Init.KeepBias {
			if *x.b, err = read(x.p, "bias"); err != nil {
				return nil, err
			}
		}
	}
	m, err := initmap.Mixer(j.Sizes, att, j.Init, j.Opts.Seed, l)
	if err != nil {
		return nil, fmt.Errorf("%s: layer %d: %w", j.Opts.Teacher, l, err)
	}
	return m, nil
}

func (j *Job) provenance(hashes map[string]string) Provenance {
	in := j.Init
	p := Provenance{
		Tool: "matsurgery", Version: j.Opts.Version, Teacher: filepath.Base(filepath.Clean(j.Opts.Teacher)),
		TeacherSHA: hashes, Family: string(j.Config.Family), Plan: j.Plan, NewLayers: j.NewLayers, Seed: j.Opts.Seed,
		Init: InitRecord{
			Mapping: map[string]string{"x": "v_proj", "B": "k_proj", "C": "q_proj", "out_proj": j.Desc.Layer[layout.AttnO]},
			DtMin:   in.DtMin, DtMax: in.DtMax, DtFloor: in.DtFloor, AMin: in.AMin, AMax: in.AMax, ConvBound: in.ConvBound,
			KeepBias: in.KeepBias, DType: string(in.DType),
		},
	}
	if prev, err := os.ReadFile(filepath.Join(j.Opts.Teacher, ProvenanceName)); err == nil && json.Valid(prev) {
		p.Parent = prev
	}
	return p
}

// hashTeacher hashes the teacher's files, several at once (sha256 of one file
// is sequential; the shards are independent).
func hashTeacher(ctx context.Context, dir string) (map[string]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	out := make(map[string]string, len(names))
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if ctx.Err() != nil {
				return
			}
			sum, err := SHA256File(filepath.Join(dir, n))
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			out[n] = sum
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return out, ctx.Err()
}

// SHA256File is the hex sha256 of a file. The file is hashed through a
// read-only memory map when it can be (no copy into user space: the hash is
// the only work), else by reads.
func SHA256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		ok, err := hashMapped(h, f, st.Size())
		if err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		if ok {
			return hex.EncodeToString(h.Sum(nil)), nil
		}
	}
	h.Reset()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashMapped feeds f to h through read-only mappings of a bounded window
// (so resident memory stays small whatever the file's size); false when
// mapping fails before anything was hashed.
func hashMapped(h hash.Hash, f *os.File, size int64) (bool, error) {
	const window = 64 << 20 // a multiple of every page size
	for off := int64(0); off < size; off += window {
		n := int(min(window, size-off))
		m, err := mmap.MapRegion(f, n, mmap.RDONLY, 0, off)
		if err != nil {
			if off == 0 {
				return false, nil
			}
			return false, fmt.Errorf("map at offset %d: %w", off, err)
		}
		h.Write(m)
		m.Unmap()
	}
	return true, nil
}
