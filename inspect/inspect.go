// Package inspect says what a checkpoint directory holds — family and
// shapes, parameters per component, dtypes, shards, which decoder layers are
// attention and which Mamba-2 — and what is wrong with it, from the
// safetensors headers and the JSON configs alone (no tensor data is read, so
// a 6 GB checkpoint is inspected in milliseconds).
package inspect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/layout"
)

// Report is everything inspect finds; it marshals to JSON with every figure.
type Report struct {
	Path       string `json:"path"`
	Layout     string `json:"layout"` // "tinyllava_factory" or "legacy"
	Family     string `json:"family,omitempty"`
	LLMName    string `json:"llm_model_name_or_path,omitempty"`
	VisionName string `json:"vision_model_name_or_path,omitempty"`
	Connector  string `json:"connector_type,omitempty"`
	// Synthetic is the matsurgery synth record of a generated checkpoint
	// (safetensors metadata "matsurgery.synth"), empty otherwise.
	Synthetic string `json:"synthetic,omitempty"`

	Text   *formats.TextConfig `json:"text,omitempty"`
	Vision *VisionSizes        `json:"vision,omitempty"`

	Hybrid      bool  `json:"hybrid"`
	MambaConfig bool  `json:"mamba_config"` // mamba_config.json present
	MambaLayers []int `json:"mamba_layers"` // from the tensors
	AttnLayers  []int `json:"attn_layers"`  // from the tensors

	Components  []ComponentCount `json:"components"`
	TotalParams int64            `json:"total_params"`
	DTypes      []DTypeCount     `json:"dtypes"`
	TotalBytes  int64            `json:"total_tensor_bytes"`
	Tensors     int              `json:"tensors"`
	Files       []FileSummary    `json:"files"`
	FileBytes   int64            `json:"total_file_bytes"`

	Layers   []LayerSummary `json:"layers"`
	Problems []Problem      `json:"problems"`
}

// VisionSizes are the vision tower's sizes.
type VisionSizes struct {
	formats.VisionConfig
	NumPatches int `json:"num_patches"`
}

// ComponentCount is the parameter count of one part of the model.
type ComponentCount struct {
	Component string `json:"component"` // vision_tower, connector, llm, lm_head, other
	Tensors   int    `json:"tensors"`
	Params    int64  `json:"params"`
	Bytes     int64  `json:"bytes"`
	// TiedTo names the tensor a tied head shares (no tensor of its own;
	// Params is 0 and the shared parameters count once, in llm).
	TiedTo string `json:"tied_to,omitempty"`
}

// DTypeCount is how much of the checkpoint one dtype holds.
type DTypeCount struct {
	DType   string `json:"dtype"`
	Tensors int    `json:"tensors"`
	Params  int64  `json:"params"`
	Bytes   int64  `json:"bytes"`
}

// FileSummary is one file of the checkpoint directory that inspect read.
type FileSummary struct {
	Name    string `json:"name"`
	Tensors int    `json:"tensors"` // 0 for JSON files
	Bytes   int64  `json:"bytes"`   // size on disk
}

// LayerSummary is one decoder layer.
type LayerSummary struct {
	Index  int      `json:"index"`
	Mixer  string   `json:"mixer"` // attention, mamba, both, none
	Params int64    `json:"params"`
	DTypes []string `json:"dtypes"`
	Mamba  *Mixer   `json:"mamba,omitempty"`
}

// Mixer are a Mamba layer's sizes as its tensors give them.
type Mixer struct {
	DModel     int  `json:"d_model"`
	DInner     int  `json:"d_inner"`
	DXB        int  `json:"d_xb"`
	NHeads     int  `json:"nheads"`
	HeadDim    int  `json:"headdim"`
	ConvDim    int  `json:"conv_dim"`
	ConvKernel int  `json:"conv_kernel"`
	InProjRows int  `json:"in_proj_rows"`
	Bias       bool `json:"bias"`
}

// Severity of a problem.
const (
	Error   = "error"   // the checkpoint will not load or convert as it is
	Warning = "warning" // it loads, but something is unusual
)

// Problem kinds.
const (
	KindLegacy      = "legacy_layout"
	KindConfig      = "config"
	KindMissing     = "missing_tensor"
	KindUnexpected  = "unexpected_tensor"
	KindShape       = "shape_mismatch"
	KindMambaConfig = "mamba_config"
	KindLayerMixer  = "layer_mixer"
	KindMixedDType  = "mixed_dtype"
)

// Problem is one thing wrong with the checkpoint, naming where it is.
type Problem struct {
	Severity string `json:"severity"`
	Kind     string `json:"kind"`
	Tensor   string `json:"tensor,omitempty"`
	File     string `json:"file,omitempty"` // base name within the checkpoint directory
	Layer    *int   `json:"layer,omitempty"`
	Message  string `json:"message"`
}

// Errors counts the problems of severity error.
func (r *Report) Errors() int {
	n := 0
	for _, p := range r.Problems {
		if p.Severity == Error {
			n++
		}
	}
	return n
}

func (r *Report) add(p Problem) { r.Problems = append(r.Problems, p) }

func layerRef(l int) *int { return &l }

// Dir inspects the checkpoint in dir (a TinyLLaVA config.json, safetensors
// files, and mamba_config.json on a hybrid). It fails only when the
// safetensors files cannot be read; everything else wrong is reported as a
// Problem.
func Dir(dir string) (*Report, error) {
	ck, err := formats.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", dir, err)
	}
	defer ck.Close()
	r := &Report{Path: dir, Layout: "tinyllava_factory", Synthetic: ck.Metadata["matsurgery.synth"]}
	tensors := ck.Tensors()
	fileOf := func(t formats.TensorInfo) string { return filepath.Base(t.File) }

	legacy := false
	cfg, cfgErr := formats.ReadModelConfig(dir)
	switch {
	case errors.Is(cfgErr, formats.ErrLegacyLayout):
		legacy = true
	case cfgErr == nil:
		for _, t := range tensors {
			if strings.HasPrefix(t.Name, "model.mm_projector.") || strings.HasPrefix(t.Name, "model.vision_tower.") {
				legacy = true
				break
			}
		}
	}
	if legacy {
		r.Layout = "legacy"
		cfg = nil
		r.add(Problem{Severity: Error, Kind: KindLegacy, File: "config.json", Message: formats.ErrLegacyLayout.Error()})
	} else if cfgErr != nil {
		r.add(Problem{Severity: Error, Kind: KindConfig, File: "config.json", Message: cfgErr.Error()})
	}
	if cfg != nil {
		r.Family, r.LLMName, r.VisionName, r.Connector = string(cfg.Family), cfg.LLMName, cfg.VisionName, cfg.ConnectorType
		text := cfg.Text
		r.Text = &text
		r.Vision = &VisionSizes{VisionConfig: cfg.Vision, NumPatches: cfg.Vision.NumPatches()}
	}

	r.count(tensors, legacy, cfg)
	r.files(ck, tensors)

	byName := make(map[string]formats.TensorInfo, len(tensors))
	for _, t := range tensors {
		byName[t.Name] = t
	}
	numLayers := 0
	if cfg != nil {
		numLayers = cfg.Text.NumLayers
	} else if !legacy {
		for _, t := range tensors {
			numLayers = max(numLayers, layout.LayerOf(t.Name)+1)
		}
	}

	// Which layers hold which mixer, from the tensors.
	hasAttn := make([]bool, numLayers)
	hasMamba := make([]bool, numLayers)
	for _, t := range tensors {
		l := layout.LayerOf(t.Name)
		if l < 0 || l >= numLayers {
			continue
		}
		switch {
		case strings.HasPrefix(t.Name, layout.AttentionPrefix(l)):
			hasAttn[l] = true
		case strings.HasPrefix(t.Name, layout.MambaPrefix(l)):
			hasMamba[l] = true
		}
	}
	mc, mcOK, mcErr := formats.ReadMambaConfig(dir)
	r.MambaConfig = mcOK
	if mcErr != nil {
		r.add(Problem{Severity: Error, Kind: KindMambaConfig, File: formats.MambaConfigName, Message: mcErr.Error()})
		mc = nil
	}
	r.MambaLayers, r.AttnLayers = []int{}, []int{}
	for l := range numLayers {
		if hasMamba[l] {
			r.MambaLayers = append(r.MambaLayers, l)
		}
		if hasAttn[l] {
			r.AttnLayers = append(r.AttnLayers, l)
		}
	}
	r.Hybrid = mcOK || len(r.MambaLayers) > 0

	r.layers(tensors, byName, numLayers, hasAttn, hasMamba, fileOf)
	if cfg != nil {
		r.checkMambaConfig(cfg, mc, mcOK, byName, hasAttn, hasMamba, fileOf)
		r.checkExpected(cfg, mc, tensors, byName, hasAttn, hasMamba, fileOf)
	}
	return r, nil
}

// component classifies a tensor, legacy names included.
func component(name string, legacy bool) layout.Component {
	if legacy {
		switch {
		case strings.HasPrefix(name, "model.vision_tower."):
			return layout.Vision
		case strings.HasPrefix(name, "model.mm_projector."):
			return layout.Connector
		case strings.HasPrefix(name, "lm_head."):
			return layout.Head
		case strings.HasPrefix(name, "model."):
			return layout.LLM
		}
	}
	return layout.ComponentOf(name)
}

// count fills parameters per component and per dtype.
func (r *Report) count(tensors []formats.TensorInfo, legacy bool, cfg *formats.ModelConfig) {
	comps := map[layout.Component]*ComponentCount{}
	for _, c := range layout.Components {
		comps[c] = &ComponentCount{Component: string(c)}
	}
	dts := map[formats.DType]*DTypeCount{}
	for _, t := range tensors {
		n := t.NumElements()
		c := comps[component(t.Name, legacy)]
		c.Tensors++
		c.Params += n
		c.Bytes += t.Size
		d := dts[t.DType]
		if d == nil {
			d = &DTypeCount{DType: string(t.DType)}
			dts[t.DType] = d
		}
		d.Tensors++
		d.Params += n
		d.Bytes += t.Size
		r.TotalParams += n
		r.TotalBytes += t.Size
	}
	r.Tensors = len(tensors)
	head := comps[layout.Head]
	if cfg != nil && head.Tensors == 0 && cfg.Text.TieWordEmbeddings {
		if d, err := layout.For(cfg.Family); err == nil {
			head.TiedTo = d.ModelTensor(layout.Embed, "weight")
		}
	}
	for _, c := range layout.Components {
		if c == layout.Other && comps[c].Tensors == 0 {
			continue
		}
		r.Components = append(r.Components, *comps[c])
	}
	for _, d := range dts {
		r.DTypes = append(r.DTypes, *d)
	}
	sort.Slice(r.DTypes, func(i, j int) bool {
		if r.DTypes[i].Bytes != r.DTypes[j].Bytes {
			return r.DTypes[i].Bytes > r.DTypes[j].Bytes
		}
		return r.DTypes[i].DType < r.DTypes[j].DType
	})
}

// files lists the shards (with their tensor counts), then the directory's
// other regular files (index, configs, tokenizer, provenance).
func (r *Report) files(ck *formats.Checkpoint, tensors []formats.TensorInfo) {
	perFile := map[string]int{}
	for _, t := range tensors {
		perFile[t.File]++
	}
	paths := slices.Clone(ck.Files)
	var others []string
	if entries, err := os.ReadDir(ck.Dir); err == nil {
		for _, e := range entries {
			p := filepath.Join(ck.Dir, e.Name())
			if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") && !slices.Contains(paths, p) {
				others = append(others, p)
			}
		}
	}
	sort.Strings(others)
	for _, p := range append(paths, others...) {
		fs := FileSummary{Name: filepath.Base(p), Tensors: perFile[p]}
		if st, err := os.Stat(p); err == nil {
			fs.Bytes = st.Size()
		}
		r.Files = append(r.Files, fs)
		r.FileBytes += fs.Bytes
	}
}

// layers fills the per-layer table, the mixer sizes of Mamba layers and the
// mixed-dtype problems.
func (r *Report) layers(tensors []formats.TensorInfo, byName map[string]formats.TensorInfo, numLayers int,
	hasAttn, hasMamba []bool, fileOf func(formats.TensorInfo) string) {
	perLayer := make([][]formats.TensorInfo, numLayers)
	for _, t := range tensors {
		if l := layout.LayerOf(t.Name); l >= 0 && l < numLayers {
			perLayer[l] = append(perLayer[l], t)
		}
	}
	for l := range numLayers {
		ls := LayerSummary{Index: l, DTypes: []string{}}
		switch {
		case hasAttn[l] && hasMamba[l]:
			ls.Mixer = "both"
		case hasMamba[l]:
			ls.Mixer = "mamba"
		case hasAttn[l]:
			ls.Mixer = "attention"
		default:
			ls.Mixer = "none"
		}
		count := map[formats.DType][]string{}
		for _, t := range perLayer[l] {
			ls.Params += t.NumElements()
			count[t.DType] = append(count[t.DType], t.Name)
		}
		for d := range count {
			ls.DTypes = append(ls.DTypes, string(d))
		}
		sort.Strings(ls.DTypes)
		if len(count) > 1 {
			r.mixedDTypes(l, count, byName, fileOf)
		}
		if hasMamba[l] {
			ls.Mamba = mixerSizes(l, byName)
			if m := ls.Mamba; m != nil && m.NHeads > 0 && m.InProjRows != 2*m.DInner+2*m.DXB+m.NHeads {
				name := layout.MambaPrefix(l) + initmap.InProj
				r.add(Problem{Severity: Error, Kind: KindShape, Tensor: name, File: fileOf(byName[name]), Layer: layerRef(l),
					Message: fmt.Sprintf("in_proj has %d rows, but its mixer's other tensors give 2·d_inner + 2·d_xb + nheads = 2·%d + 2·%d + %d = %d",
						m.InProjRows, m.DInner, m.DXB, m.NHeads, 2*m.DInner+2*m.DXB+m.NHeads)})
			}
		}
		r.Layers = append(r.Layers, ls)
	}
}

func (r *Report) mixedDTypes(l int, count map[formats.DType][]string, byName map[string]formats.TensorInfo, fileOf func(formats.TensorInfo) string) {
	// The majority dtype is the layer's; name the tensors in the others.
	var major formats.DType
	for d, names := range count {
		if len(names) > len(count[major]) || (len(names) == len(count[major]) && d < major) {
			major = d
		}
	}
	var parts []string
	for d, names := range count {
		parts = append(parts, fmt.Sprintf("%d %s", len(names), d))
	}
	sort.Strings(parts)
	var odd []string
	for d, names := range count {
		if d != major {
			odd = append(odd, names...)
		}
	}
	sort.Strings(odd)
	for _, n := range odd {
		r.add(Problem{Severity: Warning, Kind: KindMixedDType, Tensor: n, File: fileOf(byName[n]), Layer: layerRef(l),
			Message: fmt.Sprintf("%s in a layer of %s tensors (layer %d holds %s)", byName[n].DType, major, l, strings.Join(parts, ", "))})
	}
}

// mixerSizes reads a Mamba layer's sizes off its tensors' shapes; fields
// whose tensor is missing or malformed stay 0.
func mixerSizes(l int, byName map[string]formats.TensorInfo) *Mixer {
	p := layout.MambaPrefix(l)
	shape := func(n string) []int64 {
		if t, ok := byName[p+n]; ok {
			return t.Shape
		}
		return nil
	}
	m := &Mixer{}
	if s := shape(initmap.InProj); len(s) == 2 {
		m.InProjRows, m.DModel = int(s[0]), int(s[1])
	}
	if s := shape(initmap.ALog); len(s) == 1 {
		m.NHeads = int(s[0])
	}
	if s := shape(initmap.OutProj); len(s) == 2 {
		m.DInner = int(s[1])
		if m.DModel == 0 {
			m.DModel = int(s[0])
		}
	} else if s := shape(initmap.NormW); len(s) == 1 {
		m.DInner = int(s[0])
	}
	if s := shape(initmap.Conv1dW); len(s) == 3 {
		m.ConvDim, m.ConvKernel = int(s[0]), int(s[2])
		m.DXB = (m.ConvDim - m.DInner) / 2
	}
	if m.NHeads > 0 {
		m.HeadDim = m.DInner / m.NHeads
	}
	_, m.Bias = byName[p+initmap.InProjBias]
	return m
}

// checkMambaConfig compares mamba_config.json with config.json and with the
// tensors.
func (r *Report) checkMambaConfig(cfg *formats.ModelConfig, mc *formats.MambaConfig, present bool,
	byName map[string]formats.TensorInfo, hasAttn, hasMamba []bool, fileOf func(formats.TensorInfo) string) {
	const file = formats.MambaConfigName
	if !present {
		if len(r.MambaLayers) > 0 {
			r.add(Problem{Severity: Error, Kind: KindMambaConfig, File: file,
				Message: fmt.Sprintf("layers %s hold Mamba tensors but there is no %s: loaders cannot tell the Mamba layers from the attention ones", ints(r.MambaLayers), file)})
		}
		return
	}
	if mc == nil { // present but unreadable: already reported
		return
	}
	t := cfg.Text
	bad := func(format string, args ...any) {
		r.add(Problem{Severity: Error, Kind: KindMambaConfig, File: file, Message: fmt.Sprintf(format, args...)})
	}
	if mc.NLayer != t.NumLayers {
		bad("n_layer %d, but config.json has %d decoder layers", mc.NLayer, t.NumLayers)
	}
	if mc.DModel != t.HiddenSize {
		bad("d_model %d, but config.json's hidden_size is %d", mc.DModel, t.HiddenSize)
	}
	if want := t.NumHeads * t.HeadDim; mc.DInner != want {
		bad("d_inner %d, but config.json gives num_attention_heads × head_dim = %d × %d = %d", mc.DInner, t.NumHeads, t.HeadDim, want)
	}
	if want := t.NumKVHeads * t.HeadDim; mc.DXB != want {
		bad("d_xb %d, but config.json gives num_key_value_heads × head_dim = %d × %d = %d", mc.DXB, t.NumKVHeads, t.HeadDim, want)
	}
	if mc.NGroups != t.NumHeads {
		bad("ssm_cfg.ngroups %d, but config.json has %d attention heads", mc.NGroups, t.NumHeads)
	}
	if mc.DState != t.HeadDim {
		bad("ssm_cfg.d_state %d, but config.json's head_dim is %d", mc.DState, t.HeadDim)
	}
	listedAttn := map[int]bool{}
	for _, l := range mc.AttnLayers {
		listedAttn[l] = true
	}
	for l := 0; l < min(len(hasAttn), mc.NLayer); l++ {
		switch {
		case listedAttn[l] && hasMamba[l]:
			r.add(Problem{Severity: Error, Kind: KindMambaConfig, File: file, Layer: layerRef(l), Tensor: layout.MambaPrefix(l) + initmap.InProj,
				Message: fmt.Sprintf("layer %d is listed in attn_layers but holds Mamba tensors (%s*)", l, layout.MambaPrefix(l))})
		case !listedAttn[l] && !hasMamba[l]:
			what := "no mixer tensors at all"
			if hasAttn[l] {
				what = fmt.Sprintf("attention tensors (%s*) and no Mamba ones", layout.AttentionPrefix(l))
			}
			r.add(Problem{Severity: Error, Kind: KindMambaConfig, File: file, Layer: layerRef(l),
				Message: fmt.Sprintf("layer %d is a Mamba layer by attn_layers (absent from it) but holds %s", l, what)})
		}
	}
	// in_proj rows against the sizes mamba_config.json declares.
	wantRows := 2*mc.DInner + 2*mc.DXB + mc.NGroups
	for _, l := range r.MambaLayers {
		name := layout.MambaPrefix(l) + initmap.InProj
		if ti, ok := byName[name]; ok && len(ti.Shape) == 2 && int(ti.Shape[0]) != wantRows {
			r.add(Problem{Severity: Error, Kind: KindMambaConfig, File: fileOf(ti), Tensor: name, Layer: layerRef(l),
				Message: fmt.Sprintf("in_proj has %d rows, but %s gives 2·d_inner + 2·d_xb + nheads = 2·%d + 2·%d + %d = %d",
					ti.Shape[0], file, mc.DInner, mc.DXB, mc.NGroups, wantRows)})
		}
		if _, ok := byName[layout.MambaPrefix(l)+initmap.InProjBias]; ok != mc.IsBias {
			r.add(Problem{Severity: Error, Kind: KindMambaConfig, File: file, Layer: layerRef(l),
				Message: fmt.Sprintf("is_bias is %t but layer %d's mixer %s in_proj/out_proj biases", mc.IsBias, l, map[bool]string{true: "has", false: "has no"}[ok])})
		}
	}
}

// checkExpected compares the tensors with what the config asks for: the
// teacher layout from layout.Expected, with each Mamba layer's attention
// swapped for its mixer.
func (r *Report) checkExpected(cfg *formats.ModelConfig, mc *formats.MambaConfig, tensors []formats.TensorInfo,
	byName map[string]formats.TensorInfo, hasAttn, hasMamba []bool, fileOf func(formats.TensorInfo) string) {
	expected, err := layout.Expected(cfg)
	if err != nil {
		r.add(Problem{Severity: Error, Kind: KindConfig, File: "config.json", Message: err.Error()})
		return
	}
	t := cfg.Text
	sizes := initmap.Sizes{DModel: t.HiddenSize, NHeads: t.NumHeads, NKVHeads: t.NumKVHeads, HeadDim: t.HeadDim}
	mambaByConfig := map[int]bool{}
	if mc != nil {
		for _, l := range mc.MambaLayers() {
			mambaByConfig[l] = true
		}
	}
	// A layer's mixer follows its tensors; a layer with none follows mamba_config.json.
	isMamba := func(l int) bool { return hasMamba[l] || (!hasAttn[l] && mambaByConfig[l]) }
	keepAttn := func(l int) bool { return hasAttn[l] || !isMamba(l) }
	want := map[string][]int64{}
	var order []string
	put := func(name string, shape []int64) {
		if _, dup := want[name]; !dup {
			order = append(order, name)
		}
		want[name] = shape
	}
	for _, s := range expected {
		l := layout.LayerOf(s.Name)
		if l >= 0 && l < len(hasAttn) && strings.HasPrefix(s.Name, layout.AttentionPrefix(l)) && !keepAttn(l) {
			continue
		}
		put(s.Name, s.Shape)
	}
	for l := range hasAttn {
		if !isMamba(l) {
			continue
		}
		p := layout.MambaPrefix(l)
		o := initmap.Options{ConvKernel: 4}
		if ti, ok := byName[p+initmap.Conv1dW]; ok && len(ti.Shape) == 3 && ti.Shape[2] > 0 {
			o.ConvKernel = int(ti.Shape[2]) // the kernel width is the mixer's choice, not the config's
		}
		if mc != nil {
			o.KeepBias = mc.IsBias
		} else {
			_, o.KeepBias = byName[p+initmap.InProjBias]
		}
		shapes := initmap.Shapes(sizes, o)
		for _, n := range initmap.Order(o.KeepBias) {
			put(p+n, shapes[n])
		}
	}
	for _, name := range order {
		ti, ok := byName[name]
		if !ok {
			r.add(Problem{Severity: Error, Kind: KindMissing, Tensor: name, Layer: layerOf(name),
				Message: fmt.Sprintf("missing: the config asks for %v", want[name])})
			continue
		}
		if !slices.Equal(ti.Shape, want[name]) {
			r.add(Problem{Severity: Error, Kind: KindShape, Tensor: name, File: fileOf(ti), Layer: layerOf(name),
				Message: fmt.Sprintf("shape %v, but the config asks for %v", ti.Shape, want[name])})
		}
	}
	for _, ti := range tensors {
		if _, ok := want[ti.Name]; ok {
			continue
		}
		msg := "not part of this config's layout"
		switch l := layout.LayerOf(ti.Name); {
		case ti.Name == "language_model.lm_head.weight" && t.TieWordEmbeddings:
			msg = "an lm_head tensor although config.json ties the embeddings (tie_word_embeddings): loaders ignore it"
		case l >= t.NumLayers:
			msg = fmt.Sprintf("decoder layer %d, but config.json has %d layers", l, t.NumLayers)
		}
		r.add(Problem{Severity: Error, Kind: KindUnexpected, Tensor: ti.Name, File: fileOf(ti), Layer: layerOf(ti.Name), Message: msg})
	}
	for l := range hasAttn {
		if hasAttn[l] && hasMamba[l] {
			r.add(Problem{Severity: Error, Kind: KindLayerMixer, Layer: layerRef(l),
				Message: fmt.Sprintf("layer %d holds both attention (%s*) and Mamba (%s*) tensors", l, layout.AttentionPrefix(l), layout.MambaPrefix(l))})
		}
	}
}

func layerOf(name string) *int {
	if l := layout.LayerOf(name); l >= 0 {
		return layerRef(l)
	}
	return nil
}

func ints(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ",")
}
