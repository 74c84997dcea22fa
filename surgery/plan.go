// Package surgery is the convert pipeline: it opens a TinyLLaVA teacher,
// plans which decoder layers become Mamba-2 layers, and streams a hybrid
// checkpoint out of it — untouched tensors copied byte for byte, new mixers
// built by initmap, one tensor at a time, written atomically.
package surgery

import (
	"fmt"
	"path/filepath"
	"sort"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/layout"
	"github.com/matsurgery/matsurgery/progress"
)

// Options of a conversion.
type Options struct {
	Teacher string // teacher checkpoint directory
	Out     string // output directory

	// Exactly one of Ratio, Layers, Preset.
	Ratio  float64
	Layers []int
	Preset string

	Seed      uint64
	Init      initmap.Options   // DType "" = the teacher's dtype
	ShardSize int64             // bytes; 0 = shard like the teacher
	Force     bool              // replace a non-empty Out
	Version   string            // tool version for the provenance file
	Progress  progress.Reporter // nil = silent
}

// Job is a planned conversion: everything decided, nothing written.
type Job struct {
	Opts      Options
	Teacher   *formats.Checkpoint
	Config    *formats.ModelConfig
	Desc      *layout.Descriptor
	Plan      layout.Plan // every Mamba layer of the result
	NewLayers []int       // the layers this conversion converts
	Existing  []int       // Mamba layers the teacher already had
	Sizes     initmap.Sizes
	Init      initmap.Options

	Specs   []formats.TensorSpec // output tensors in write order
	Groups  [][]string           // output tensors per shard when sharding like the teacher
	Removed []formats.TensorInfo // attention tensors dropped
	Added   []formats.TensorSpec // mixer tensors created
}

// Summary is the plan as reported by --dry-run and --json.
type Summary struct {
	Teacher       string   `json:"teacher"`
	Out           string   `json:"out"`
	Family        string   `json:"family"`
	NumLayers     int      `json:"num_layers"`
	Reason        string   `json:"reason"`
	MambaLayers   []int    `json:"mamba_layers"`
	NewLayers     []int    `json:"new_layers"`
	AttnLayers    []int    `json:"attn_layers"`
	Removed       []string `json:"tensors_removed"`
	Added         []string `json:"tensors_added"`
	ParamsRemoved int64    `json:"params_removed"`
	ParamsAdded   int64    `json:"params_added"`
	ParamDelta    int64    `json:"param_delta"`
	OutputBytes   int64    `json:"output_bytes"`
	DType         string   `json:"new_tensor_dtype"`
	Seed          uint64   `json:"seed"`
	KeepBias      bool     `json:"keep_bias"`
}

// Prepare opens the teacher and plans the conversion. The caller closes
// job.Teacher (Close).
func Prepare(o Options) (*Job, error) {
	if o.Teacher == "" {
		return nil, fmt.Errorf("no teacher checkpoint given")
	}
	n := 0
	if o.Ratio != 0 {
		n++
	}
	if len(o.Layers) > 0 {
		n++
	}
	if o.Preset != "" {
		n++
	}
	if n != 1 {
		return nil, fmt.Errorf("give exactly one of --ratio, --layers, --preset")
	}
	cfg, err := formats.ReadModelConfig(o.Teacher)
	if err != nil {
		return nil, err
	}
	desc, err := layout.For(cfg.Family)
	if err != nil {
		return nil, err
	}
	ck, err := formats.Open(o.Teacher)
	if err != nil {
		return nil, err
	}
	job, err := plan(o, ck, cfg, desc)
	if err != nil {
		ck.Close()
		return nil, err
	}
	return job, nil
}

func plan(o Options, ck *formats.Checkpoint, cfg *formats.ModelConfig, desc *layout.Descriptor) (*Job, error) {
	L := cfg.Text.NumLayers
	var target layout.Plan
	var err error
	switch {
	case o.Ratio != 0:
		target, err = layout.FromRatio(o.Ratio, L)
	case len(o.Layers) > 0:
		target, err = layout.FromLayers(o.Layers, L)
	default:
		target, err = layout.FromPreset(o.Preset, L)
	}
	if err != nil {
		return nil, err
	}
	job := &Job{Opts: o, Teacher: ck, Config: cfg, Desc: desc, Plan: target}
	mc, hybrid, err := formats.ReadMambaConfig(o.Teacher)
	if err != nil {
		return nil, err
	}
	job.NewLayers = target.MambaLayers
	if hybrid {
		if mc.NLayer != L {
			return nil, fmt.Errorf("%s: n_layer %d disagrees with config.json's %d layers", filepath.Join(o.Teacher, formats.MambaConfigName), mc.NLayer, L)
		}
		job.Existing = mc.MambaLayers()
		if job.NewLayers, err = target.Extend(job.Existing); err != nil {
			return nil, err
		}
		if mc.IsBias != o.Init.KeepBias {
			return nil, fmt.Errorf("the teacher hybrid has is_bias=%t: convert further with --keep-bias=%t", mc.IsBias, mc.IsBias)
		}
	}
	t := cfg.Text
	job.Sizes = initmap.Sizes{DModel: t.HiddenSize, NHeads: t.NumHeads, NKVHeads: t.NumKVHeads, HeadDim: t.HeadDim}
	if err := job.Sizes.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.Path, err)
	}
	job.Init = o.Init
	if job.Init.ConvKernel == 0 {
		job.Init.ConvKernel = 4
	}

	// Check every attention tensor of the converted layers is there, with the shapes the config implies.
	removed := map[string]bool{}
	for _, l := range job.NewLayers {
		for _, p := range []layout.Part{layout.AttnQ, layout.AttnK, layout.AttnV, layout.AttnO} {
			name := desc.LayerTensor(l, p, "weight")
			info, ok := ck.Tensor(name)
			if !ok {
				return nil, fmt.Errorf("%s: layer %d has no tensor %s (is this a %s checkpoint?)", o.Teacher, l, name, cfg.Family)
			}
			if job.Init.DType == "" {
				job.Init.DType = info.DType
			}
		}
		for _, ti := range ck.Tensors() {
			if layout.LayerOf(ti.Name) == l && hasPrefix(ti.Name, layout.AttentionPrefix(l)) {
				removed[ti.Name] = true
			}
		}
	}
	if err := job.Init.Validate(); err != nil {
		return nil, err
	}
	shapes := initmap.Shapes(job.Sizes, job.Init)

	// Output order: the teacher's tensors in file order; each converted layer's
	// mixer takes the place of its first attention tensor. Shards follow the teacher's.
	byFile := map[string]int{}
	for i, f := range ck.Files {
		byFile[f] = i
	}
	tensors := ck.Tensors()
	sort.SliceStable(tensors, func(i, j int) bool {
		fi, fj := byFile[tensors[i].File], byFile[tensors[j].File]
		if fi != fj {
			return fi < fj
		}
		return tensors[i].Offset < tensors[j].Offset
	})
	job.Groups = make([][]string, len(ck.Files))
	placed := map[int]bool{}
	for _, ti := range tensors {
		g := byFile[ti.File]
		if !removed[ti.Name] {
			job.Specs = append(job.Specs, formats.TensorSpec{Name: ti.Name, DType: ti.DType, Shape: ti.Shape})
			job.Groups[g] = append(job.Groups[g], ti.Name)
			continue
		}
		job.Removed = append(job.Removed, ti)
		l := layout.LayerOf(ti.Name)
		if placed[l] {
			continue
		}
		placed[l] = true
		for _, suffix := range initmap.Order(job.Init.KeepBias) {
			spec := formats.TensorSpec{Name: layout.MambaPrefix(l) + suffix, DType: job.Init.DType, Shape: shapes[suffix]}
			if _, clash := ck.Tensor(spec.Name); clash {
				return nil, fmt.Errorf("%s: tensor %s already exists", o.Teacher, spec.Name)
			}
			job.Specs = append(job.Specs, spec)
			job.Added = append(job.Added, spec)
			job.Groups[g] = append(job.Groups[g], spec.Name)
		}
	}
	return job, nil
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// Summary describes the job.
func (j *Job) Summary() Summary {
	s := Summary{
		Teacher: j.Opts.Teacher, Out: j.Opts.Out, Family: string(j.Config.Family), NumLayers: j.Plan.NumLayers,
		Reason: j.Plan.Reason, MambaLayers: j.Plan.MambaLayers, NewLayers: j.NewLayers, AttnLayers: j.Plan.AttnLayers(),
		DType: string(j.Init.DType), Seed: j.Opts.Seed, KeepBias: j.Init.KeepBias,
	}
	for _, r := range j.Removed {
		s.Removed = append(s.Removed, r.Name)
		s.ParamsRemoved += numel(r.Shape)
	}
	for _, a := range j.Added {
		s.Added = append(s.Added, a.Name)
		s.ParamsAdded += numel(a.Shape)
	}
	s.ParamDelta = s.ParamsAdded - s.ParamsRemoved
	for _, sp := range j.Specs {
		s.OutputBytes += numel(sp.Shape) * int64(sp.DType.Size())
	}
	if s.AttnLayers == nil {
		s.AttnLayers = []int{}
	}
	return s
}

// MambaConfig is the mamba_config.json of the result.
func (j *Job) MambaConfig() *formats.MambaConfig {
	t := j.Config.Text
	m := &formats.MambaConfig{
		DModel: t.HiddenSize, Expand: 1, NGroups: t.NumHeads, DState: t.HeadDim, NormEps: t.NormEps,
		NormEpsKey: "rms_norm_eps", DInner: j.Sizes.DInner(), DXB: j.Sizes.DXB(), IntermediateSize: t.IntermediateSize,
		HiddenAct: t.HiddenAct, NLayer: t.NumLayers, AttnLayers: j.Plan.AttnLayers(), IsBias: j.Init.KeepBias,
	}
	if m.AttnLayers == nil {
		m.AttnLayers = []int{}
	}
	if j.Config.Family == formats.Phi {
		m.NormEpsKey = "layer_norm_eps"
		pd := t.ResidPdrop
		m.ResidPdrop = &pd
	}
	return m
}
